"""`dplbench data fewshot`: few-shot and long-tail training sets as small shard sets of their own.

A selection is drawn from the converted dataset's index (split-source order, so the CoOp-exact
sampler sees the same lists as CoOp) by protocols.py, then its samples are copied out of the
full shards into `<key>/fewshot/<name>/<split>/<n>.tar` with `nshards.txt` and a
`selection.json` (keys, counts, shards). A 16-shot ImageNet run then streams 16k images, not
1.28M. Names: `k<shots>_s<seed>` (few-shot, all classes), `k<shots>_s<seed>_<base|novel>`
(few-shot drawn over all classes, only that subset written), `lt<ratio>_s<seed>` (long-tail
base classes of the full train split). Labels stay the original ones: base/novel relabelling is
applied at read time by `DatasetView`. One pass over the source shards serves every selection
asked for in one call; each selection is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dplbench import storage
from dplbench.data import tario
from dplbench.data.errors import DataError
from dplbench.data.meta import (
    FEWSHOT_DIR,
    FORMAT_VERSION,
    SELECTION_FILE,
    SplitMeta,
    load_index,
    load_meta,
)
from dplbench.data.parallel import run_tasks
from dplbench.data.progress import Progress
from dplbench.data.protocols import fewshot_sample, longtail_select, subsample_labels
from dplbench.storage import write_atomic

log = logging.getLogger(__name__)


def selection_name(
    shots: int | None, seed: int, imbalance: float | None = None, subsample: str = "all"
) -> str:
    """Folder name of a selection (see module doc)."""
    if imbalance is not None:
        return f"lt{imbalance:g}_s{seed}"
    return f"k{shots}_s{seed}" + ("" if subsample == "all" else f"_{subsample}")


@dataclass
class Selection:
    dataset: str
    name: str
    protocol: str  # "fewshot" | "longtail"
    seed: int
    shots: int | None = None
    imbalance: float | None = None
    subsample: str = "all"  # classes written (the draw is always over all classes)
    keys: dict[str, list[str]] = field(default_factory=dict)  # split -> keys (draw order)
    splits: dict[str, SplitMeta] = field(default_factory=dict)  # filled when written
    source_checksum: str = ""
    samples_per_shard: int = 0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Selection:
        d = json.loads(text)
        d["splits"] = {k: SplitMeta(**v) for k, v in d["splits"].items()}
        return cls(**d)


def _split_items(index, split: str) -> list[tuple[str, int]]:
    """(key, label) of a split in split-source order."""
    import pyarrow.compute as pc

    rows = index.filter(pc.equal(index["split"], split)).sort_by("idx")
    return list(zip(rows["key"].to_pylist(), rows["label"].to_pylist(), strict=True))


def plan_selections(
    shards_root: str | Path,
    dataset: str,
    shots: list[int],
    seeds: list[int],
    subsample: str = "all",
    imbalance: float | None = None,
) -> list[Selection]:
    """The key sets of every (shots, seed), or of every seed's long-tail set if `imbalance`."""
    meta = load_meta(shards_root, dataset)
    index = load_index(shards_root, dataset)
    if "train" not in meta.splits:
        return []  # test-only datasets (ImageNet variants) have nothing to sample
    train = _split_items(index, "train")
    # Only a split of its own is sampled: ImageNet's val is its test set (CoOp samples no val
    # there either).
    val = _split_items(index, "val") if "val" in meta.splits else None
    n_classes = len(meta.classnames)
    out = []
    for seed in seeds:
        if imbalance is not None:
            base = subsample_labels(range(n_classes), "base")
            picked = {"train": [k for k, _ in longtail_select(train, base, imbalance, seed)]}
            sel = Selection(
                dataset,
                selection_name(None, seed, imbalance),
                "longtail",
                seed,
                imbalance=imbalance,
                subsample="base",
                keys=picked,
            )
            out.append(sel)
            continue
        keep = set(subsample_labels(range(n_classes), subsample))
        for k in shots:
            tr, va = fewshot_sample(train, val, k, seed)
            picked = {"train": [key for key, lab in tr if lab in keep]}
            if val is not None:
                picked["val"] = [key for key, lab in va if lab in keep]
            out.append(
                Selection(
                    dataset,
                    selection_name(k, seed, None, subsample),
                    "fewshot",
                    seed,
                    shots=k,
                    subsample=subsample,
                    keys=picked,
                )
            )
    for sel in out:
        sel.source_checksum = meta.source.get("checksum", "")
    return out


@dataclass(frozen=True)
class _ReadTask:
    url: str
    keys: frozenset[str]


def _read_needed(task: _ReadTask) -> list[dict]:
    return [s for s in tario.iter_samples(task.url) if s["__key__"] in task.keys]


def _up_to_date(folder: Path, sel: Selection, samples_per_shard: int) -> bool:
    path = folder / SELECTION_FILE
    if not path.is_file():
        return False
    old = Selection.from_json(path.read_text())
    return (
        old.format_version == FORMAT_VERSION
        and old.source_checksum == sel.source_checksum
        and old.samples_per_shard == samples_per_shard
        and old.keys == sel.keys
    )


def write_selections(
    shards_root: str | Path,
    selections: list[Selection],
    samples_per_shard: int = 1000,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[str]:
    """Copy each selection's samples into its own shard set; returns the names written (the
    up-to-date ones are left untouched). All selections must be of one dataset."""
    if not selections:
        return []
    dataset = selections[0].dataset
    ds_dir = Path(shards_root) / dataset
    todo = [
        s
        for s in selections
        if not _up_to_date(ds_dir / FEWSHOT_DIR / s.name, s, samples_per_shard)
    ]
    if not todo:
        return []
    index = load_index(shards_root, dataset)
    keys = index["key"].to_pylist()
    shard_of = dict(zip(keys, index["shard"].to_pylist(), strict=True))
    label_of = dict(zip(keys, index["label"].to_pylist(), strict=True))
    needed: dict[str, set[str]] = {}
    for sel in todo:
        for keys in sel.keys.values():
            for key in keys:
                needed.setdefault(shard_of[key], set()).add(key)
    meta = load_meta(shards_root, dataset)
    order = [rel for m in meta.splits.values() for rel in m.shards if rel in needed]
    tasks = [_ReadTask(str(ds_dir / rel), frozenset(needed[rel])) for rel in order]

    tmp_root = ds_dir / FEWSHOT_DIR
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmps = {s.name: tmp_root / f".{s.name}.tmp-{uuid.uuid4().hex[:8]}" for s in todo}
    wanted = {s.name: {sp: set(k) for sp, k in s.keys.items()} for s in todo}
    sinks = {
        (s.name, sp): tario.ShardSink(tmps[s.name] / sp, samples_per_shard, f"{sp}/")
        for s in todo
        for sp in s.keys
    }
    try:
        with Progress.maybe(progress, f"fewshot {dataset}", len(tasks)) as bar:
            for samples in run_tasks(_read_needed, tasks, workers, ordered=True):
                for sample in samples:
                    split = sample["__key__"].rsplit("_", 1)[0]
                    for s in todo:
                        if sample["__key__"] in wanted[s.name].get(split, ()):
                            sinks[(s.name, split)].write(sample)
                bar.advance(1)
        for s in todo:
            for sp in s.keys:
                sink = sinks[(s.name, sp)]
                sink.close()
                (tmps[s.name] / sp / "nshards.txt").write_text(f"{len(sink.shards)}\n")
                per_label = [0] * len(meta.classnames)
                for key in s.keys[sp]:
                    per_label[label_of[key]] += 1
                s.splits[sp] = SplitMeta(sum(sink.counts), sink.shards, sink.counts, 0, per_label)
                missing = len(s.keys[sp]) - sum(sink.counts)
                if missing:
                    raise RuntimeError(
                        f"{dataset}/{s.name}/{sp}: {missing} selected keys not found"
                    )
            s.samples_per_shard = samples_per_shard
            write_atomic(tmps[s.name] / SELECTION_FILE, s.to_json())
            final = tmp_root / s.name
            if final.exists():
                shutil.rmtree(final)
            tmps[s.name].rename(final)
    finally:
        for sink in sinks.values():
            sink.close()
        for t in tmps.values():
            shutil.rmtree(t, ignore_errors=True)
    names = [s.name for s in todo]
    log.info("%s: wrote %s", dataset, ", ".join(names))
    return names


def make_fewshot(
    shards_root: str | Path,
    datasets: list[str],
    shots: list[int],
    seeds: list[int],
    subsample: str = "all",
    imbalance: float | None = None,
    samples_per_shard: int = 1000,
    workers: int = 1,
    show_progress: bool = True,
) -> dict[str, list[Selection]]:
    """Plan and write the selections of several datasets; returns dataset -> selections."""
    out = {}
    with Progress(enabled=show_progress) as progress:
        for key in datasets:
            sels = plan_selections(shards_root, key, shots, seeds, subsample, imbalance)
            if not sels:
                log.info("%s: test-only, no few-shot sets", key)
            write_selections(shards_root, sels, samples_per_shard, workers, progress)
            out[key] = sels
    return out


def load_selection(shards_root: str | Path, dataset: str, name: str) -> Selection:
    url = storage.join(shards_root, dataset, FEWSHOT_DIR, name, SELECTION_FILE)
    text = storage.read_text(url)
    try:
        return Selection.from_json(text)
    except DataError as e:
        raise DataError(f"{url}: {e}") from None
