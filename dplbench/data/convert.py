"""`dplbench data convert`: $DATA in the CoOp layout -> WebDataset shards per split.

One dataset at a time: read the split source (coop_layout), check every listed image exists,
cut each split into shard tasks (a seeded permutation of the split, so that shards mix classes;
keys keep the index in the split source), write the shards in parallel (parallel.run_tasks),
then the metadata, all under `<out>/.<key>.tmp-*`, renamed to `<out>/<key>` at the very end. An
interrupted conversion therefore never leaves a complete-looking `<out>/<key>`. A dataset whose
`dplbench.json` has the same source checksum and options is left untouched.
"""

from __future__ import annotations

import logging
import random
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from dplbench.data import images
from dplbench.data.coop_layout import SourceItem, read_source
from dplbench.data.datasets import get_spec, prompt_name
from dplbench.data.errors import MissingImagesError
from dplbench.data.meta import (
    FORMAT_VERSION,
    INDEX_FILE,
    META_FILE,
    DatasetMeta,
    SplitMeta,
)
from dplbench.data.parallel import run_tasks
from dplbench.data.progress import Progress
from dplbench.data.tario import write_tar
from dplbench.storage import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertOptions:
    samples_per_shard: int = 1000
    max_side: int | None = None  # re-encode images whose shorter side is larger than this
    skip_missing: bool = False  # skip (and record) missing/undecodable images instead of failing
    shuffle_seed: int = 0  # seed of the sample order within each split's shards

    def shaping(self) -> dict:
        """The options that shape the output (a change means converting again)."""
        d = asdict(self)
        d.pop("skip_missing")
        return d


@dataclass(frozen=True)
class ShardTask:
    path: str  # absolute output path of the tar
    rel: str  # "<split>/<n>.tar"
    # (source path, source rel path, key, label, classname) per sample
    items: tuple[tuple[str, str, str, int, str], ...]
    max_side: int | None


@dataclass
class ShardResult:
    rel: str
    keys: list[str]  # keys written, in shard order
    bad: list[tuple[str, str]]  # (source rel path, reason) of images not written


@dataclass
class ConvertReport:
    dataset: str
    status: str  # "converted" | "up-to-date"
    counts: dict[str, int]
    skipped: int = 0


def sample_key(split: str, idx: int) -> str:
    """Key of the idx-th entry of a split source: stable across re-runs, unique per dataset."""
    return f"{split}_{idx:07d}"


def write_shard(task: ShardTask) -> ShardResult:
    """Read, check and write the images of one shard (runs in a worker or a Ray task)."""
    keys: list[str] = []
    bad: list[tuple[str, str]] = []

    def samples():
        for src, rel, key, label, cname in task.items:
            try:
                with open(src, "rb") as f:
                    data = f.read()
                data, ext = images.check_and_encode(data, src, task.max_side)
            except FileNotFoundError:
                bad.append((rel, "missing"))
                continue
            except Exception as e:  # any decoder failure means an unusable image
                bad.append((rel, f"undecodable: {type(e).__name__}: {e}"))
                continue
            keys.append(key)
            yield {"__key__": key, ext: data, "cls": str(label).encode(), "txt": cname.encode()}

    write_tar(task.path, samples())
    return ShardResult(task.rel, keys, bad)


def _plan_split(
    split: str,
    items: list[SourceItem],
    keep: list[int],
    classnames: list[str],
    tmp: Path,
    opts: ConvertOptions,
) -> list[ShardTask]:
    order = list(keep)
    random.Random(opts.shuffle_seed).shuffle(order)
    n = max(1, opts.samples_per_shard)
    tasks = []
    for s, start in enumerate(range(0, len(order), n)):
        rel = f"{split}/{s}.tar"
        chunk = tuple(
            (
                str(items[i].path),
                items[i].rel,
                sample_key(split, i),
                items[i].label,
                classnames[items[i].label],
            )
            for i in order[start : start + n]
        )
        tasks.append(ShardTask(str(tmp / rel), rel, chunk, opts.max_side))
    return tasks


def _is_up_to_date(final: Path, checksum: str, opts: ConvertOptions) -> bool:
    path = final / META_FILE
    if not path.is_file():
        return False
    try:
        meta = DatasetMeta.from_json(path.read_text())
    except (ValueError, TypeError, KeyError):
        return False
    return (
        meta.format_version == FORMAT_VERSION
        and meta.source.get("checksum") == checksum
        and meta.options == opts.shaping()
    )


def convert_dataset(
    root: str | Path,
    key: str,
    out: str | Path,
    opts: ConvertOptions = ConvertOptions(),
    workers: int = 1,
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert dataset `key` from the CoOp-layout `root` into `out/key` (see module doc)."""
    root, out = Path(root), Path(out)
    spec = get_spec(key)
    source = read_source(key, root)
    files, checksum = source.checksums(root)
    final = out / key
    if _is_up_to_date(final, checksum, opts):
        log.info("%s: up to date in %s", key, final)
        meta = DatasetMeta.from_json((final / META_FILE).read_text())
        counts = {s: m.count for s, m in meta.splits.items()}
        return ConvertReport(key, "up-to-date", counts, meta.skipped.get("count", 0))

    missing: list[tuple[str, str]] = []
    keep: dict[str, list[int]] = {}
    for split, items in source.splits.items():
        keep[split] = []
        for i, it in enumerate(items):
            if it.path.is_file():
                keep[split].append(i)
            else:
                missing.append((it.rel, "missing"))
    if missing and not opts.skip_missing:
        raise MissingImagesError(key, missing)

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{key}.tmp-*"):
        # Left by an interrupted run (never a complete dataset): reclaim the space.
        log.warning("%s: removing %s left by an interrupted conversion", key, stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        classnames = [prompt_name(n) for n in source.raw_classnames]
        tasks: list[ShardTask] = []
        for split, items in source.splits.items():
            (tmp / split).mkdir(parents=True)
            tasks += _plan_split(split, items, keep[split], classnames, tmp, opts)
        total = sum(len(t.items) for t in tasks)
        results: dict[str, ShardResult] = {}
        with Progress.maybe(progress, f"convert {key}", total) as bar:
            for res in run_tasks(write_shard, tasks, workers, ray_address):
                results[res.rel] = res
                bar.advance(len(res.keys) + len(res.bad))
        undecodable = [b for r in results.values() for b in r.bad]
        if undecodable and not opts.skip_missing:
            raise MissingImagesError(key, missing + undecodable)
        bad = missing + undecodable
        if bad:
            log.warning(
                "%s: skipped %d missing/undecodable image(s), first: %s", key, len(bad), bad[:3]
            )
        meta = _finish(tmp, spec, source, classnames, tasks, results, files, checksum, opts, bad)
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = {s: m.count for s, m in meta.splits.items()}
    log.info("%s: converted %s into %s", key, counts, final)
    return ConvertReport(key, "converted", counts, len(bad))


def _finish(tmp, spec, source, classnames, tasks, results, files, checksum, opts, bad):
    """Write nshards.txt, class names, templates, index.parquet and dplbench.json into tmp."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_split: dict[str, list[ShardTask]] = {s: [] for s in source.splits}
    for t in tasks:
        by_split[t.rel.split("/")[0]].append(t)
    rows: dict[str, list] = {k: [] for k in ("key", "split", "idx", "label", "classname", "shard")}
    rows["src"] = []
    bad_rel = {rel for rel, _ in bad}
    splits: dict[str, SplitMeta] = {}
    for split, items in source.splits.items():
        shard_tasks = by_split[split]
        (tmp / split / "nshards.txt").write_text(f"{len(shard_tasks)}\n")
        for t in shard_tasks:
            for key in results[t.rel].keys:
                idx = int(key.rsplit("_", 1)[1])
                it = items[idx]
                for col, v in zip(
                    ("key", "split", "idx", "label", "classname", "shard", "src"),
                    (key, split, idx, it.label, classnames[it.label], t.rel, it.rel),
                    strict=True,
                ):
                    rows[col].append(v)
        counts = [len(results[t.rel].keys) for t in shard_tasks]
        skipped = sum(1 for it in items if it.rel in bad_rel)
        per_label = [0] * len(classnames)
        for t in shard_tasks:
            for key in results[t.rel].keys:
                per_label[items[int(key.rsplit("_", 1)[1])].label] += 1
        splits[split] = SplitMeta(
            sum(counts), [t.rel for t in shard_tasks], counts, skipped, per_label
        )
    table = pa.table(rows).sort_by([("split", "ascending"), ("idx", "ascending")])
    pq.write_table(table, tmp / INDEX_FILE)
    (tmp / "classnames.txt").write_text("\n".join(classnames) + "\n")
    # CLIP_benchmark's templates file uses "{c}"; ours (dplbench.json) keeps PROTOCOLS' "{}".
    (tmp / "zeroshot_classification_templates.txt").write_text(
        spec.template.replace("{}", "{c}") + "\n"
    )
    meta = DatasetMeta(
        dataset=spec.key,
        classnames=classnames,
        raw_classnames=source.raw_classnames,
        template=spec.template,
        splits=splits,
        aliases=dict(spec.aliases),
        source={"reader": spec.reader, "files": files, "checksum": checksum},
        options=opts.shaping(),
        skipped={"count": len(bad), "first": [list(b) for b in bad[:20]]},
    )
    write_atomic(tmp / META_FILE, meta.to_json())  # last: its presence marks a complete set
    return meta


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an older final (stale or partial) is moved aside, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert(
    root: str | Path,
    datasets: list[str],
    out: str | Path,
    opts: ConvertOptions = ConvertOptions(),
    workers: int = 1,
    ray_address: str | None = None,
    show_progress: bool = True,
) -> list[ConvertReport]:
    """Convert several datasets one after the other (each one's shards in parallel)."""
    with Progress(enabled=show_progress) as progress:
        return [
            convert_dataset(root, key, out, opts, workers, ray_address, progress)
            for key in datasets
        ]
