"""Our metadata beside the CLIP_benchmark layout: `dplbench.json` and `index.parquet`.

Layout of one converted dataset (CLIP_benchmark's WebDataset benchmark layout, plus ours):

    <shards>/<key>/<split>/<n>.tar, <split>/nshards.txt      (n = 0, 1, 2, ... as CLIP_benchmark)
    <shards>/<key>/classnames.txt                            one prompt-ready name per line
    <shards>/<key>/zeroshot_classification_templates.txt    "{c}" placeholders, as CLIP_benchmark
    <shards>/<key>/dplbench.json                             DatasetMeta below
    <shards>/<key>/index.parquet                             key, split, idx, label, classname,
                                                             shard, src (one row per sample)
    <shards>/<key>/fewshot/<name>/<split>/<n>.tar, selection.json   few-shot / long-tail sets
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dplbench import storage
from dplbench.data.errors import DataError

FORMAT_VERSION = 1
META_FILE = "dplbench.json"
INDEX_FILE = "index.parquet"
SELECTION_FILE = "selection.json"
FEWSHOT_DIR = "fewshot"


@dataclass
class SplitMeta:
    count: int  # samples written
    shards: list[str]  # shard paths relative to the dataset folder, e.g. "train/0.tar"
    shard_counts: list[int]  # samples per shard, same order
    skipped: int = 0  # listed images skipped (missing or undecodable, --skip-missing)
    label_counts: list[int] = field(default_factory=list)  # samples per label, index = label

    def __post_init__(self) -> None:
        for rel in self.shards:
            check_relative(rel)


def check_relative(rel: str) -> None:
    """A shard path from a metadata file stays below its dataset folder: relative, no `..`,
    no URL scheme. (Metadata is data: an edited file must not point readers elsewhere.)"""
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith("/") or "://" in rel or rel.startswith("pipe:") or ".." in parts:
        raise DataError(
            f"shard path {rel!r} leaves its dataset folder; metadata may only name paths below "
            "it (convert the dataset again)"
        )


@dataclass
class DatasetMeta:
    dataset: str
    classnames: list[str]  # prompt-ready (underscores replaced by spaces), index = label
    raw_classnames: list[str]  # as in the source
    template: str  # hand-crafted template, "{}" is the class name
    splits: dict[str, SplitMeta]
    aliases: dict[str, str] = field(default_factory=dict)  # e.g. ImageNet {"val": "test"}
    source: dict = field(default_factory=dict)  # {"files": {path: sha256}, "checksum": sha256}
    options: dict = field(default_factory=dict)  # conversion options that shape the output
    skipped: dict = field(default_factory=dict)  # {"count": n, "first": [[path, why], ...]}
    format_version: int = FORMAT_VERSION

    def resolve_split(self, split: str) -> str:
        """The split whose shards serve `split` (ImageNet's val is its test set)."""
        split = self.aliases.get(split, split)
        if split not in self.splits:
            raise DataError(
                f"{self.dataset} has no split {split!r}; it has {sorted(self.splits)}"
                + (f" and aliases {self.aliases}" if self.aliases else "")
            )
        return split

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> DatasetMeta:
        d = json.loads(text)
        d["splits"] = {k: SplitMeta(**v) for k, v in d["splits"].items()}
        return cls(**d)


def load_meta(shards_root: str | Path, dataset: str) -> DatasetMeta:
    """The `dplbench.json` of a converted dataset (local path or URL)."""
    url = storage.join(shards_root, dataset, META_FILE)
    try:
        text = storage.read_text(url)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{dataset}: expected {url} (run `dplbench data convert`): {e}") from None
    try:
        meta = DatasetMeta.from_json(text)
    except DataError as e:
        raise DataError(f"{url}: {e}") from None
    if meta.format_version != FORMAT_VERSION:
        raise DataError(
            f"{url}: format version {meta.format_version}, this dplbench reads {FORMAT_VERSION};"
            " convert again"
        )
    return meta


def load_index(shards_root: str | Path, dataset: str):
    """`index.parquet` of a converted dataset as a pyarrow Table."""
    import pyarrow.parquet as pq

    url = storage.join(shards_root, dataset, INDEX_FILE)
    try:
        # use_threads=False: with threads, pyarrow 26 here aborts at interpreter exit
        # ("terminate called without an active exception") in about half the runs.
        return pq.read_table(io.BytesIO(storage.read_bytes(url)), use_threads=False)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{dataset}: expected {url} (run `dplbench data convert`): {e}") from None


def converted_datasets(shards_root: str | Path) -> list[str]:
    """Keys of the datasets converted under a local shards root (sorted)."""
    root = Path(shards_root)
    if not root.is_dir():
        raise DataError(f"expected a shards directory at {root}, not found")
    return sorted(p.name for p in root.iterdir() if (p / META_FILE).is_file())
