"""`dplbench results compact`: each partition's many small files become one (or a few) files.

Per table (`rows`, `epochs`, `status`) and hive partition folder, the files a reader reads
(results/catalog.py) are read and written again as `compacted-<stamp>-<id>-<k>.parquet` (at most
`max_rows` rows each), then a manifest naming them and every file whose rows they hold (with its
size) is published, then those files are removed. A reader sees every row once at each step: before
the manifest the new files are ignored, after it the files it names are. A compaction killed at any
point leaves a root that reads the same, and the next one finishes its work: it removes what a
present manifest holds and what no manifest names of its own files. A file published during a
compaction is not in its manifest and is read as it is. Two compactions of one table never run at
once: each takes the table's lease (run/leases.py, as drivers do for jobs). Idempotent: a folder
with one compacted set and nothing else is left alone.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dplbench import storage
from dplbench.results import catalog, store
from dplbench.results.root import ResultsRoot

MAX_ROWS = 1_000_000  # rows per compacted file: a year of a lab's rows of one (suite, method)


@dataclass
class FolderResult:
    table: str
    folder: str
    files_in: int = 0  # files whose rows went into the compacted set (earlier compacted ones too)
    files_out: int = 0  # compacted files written
    rows: int = 0
    removed: int = 0  # files removed (sources, superseded sets, a killed compaction's leftovers)
    skipped: str | None = None  # why nothing was done (held elsewhere, changed while read)


@dataclass
class CompactResult:
    folders: list[FolderResult] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)  # table -> who holds its lease
    seconds: float = 0.0

    @property
    def files_in(self) -> int:
        return sum(f.files_in for f in self.folders)

    @property
    def files_out(self) -> int:
        return sum(f.files_out for f in self.folders)

    @property
    def removed(self) -> int:
        return sum(f.removed for f in self.folders)


def compact(
    root: ResultsRoot,
    tables: tuple[str, ...] = tuple(store.TABLES),
    partitions: dict[str, set[str]] | None = None,
    keep_sources: bool = False,
    max_rows: int = MAX_ROWS,
) -> CompactResult:
    """Compact `tables` of `root`; `partitions`: per table, only these partition folders
    (relative, e.g. "suite=smoke/method=coop"; a driver passes what it wrote). `keep_sources`:
    leave the files a manifest holds where they are (readers skip them all the same)."""
    from dplbench.run.leases import Leases

    t0 = time.monotonic()
    out = CompactResult()
    leases = Leases(root, f"compact-{uuid.uuid4().hex[:8]}")
    try:
        for table in tables:
            key = f"compact-{table}"
            holder = leases.acquire(key)
            if holder is not None:
                out.held[table] = holder.describe()
                continue
            try:
                files = catalog.list_table(root.table(table))
                schema, _ = store.TABLES[table]
                for folder, entries in sorted(files.folders().items()):
                    rel = folder[len(files.folder) :].strip("/").replace("\\", "/")
                    if partitions is not None and rel not in partitions.get(table, ()):
                        continue
                    res = _folder(files, folder, entries, schema, keep_sources, max_rows)
                    if res is not None:
                        out.folders.append(res)
            finally:
                leases.release(key)
    finally:
        leases.release_all()
    out.seconds = time.monotonic() - t0
    return out


def _folder(files, folder, entries, schema, keep, max_rows) -> FolderResult | None:
    res = FolderResult(files.table, folder)
    mine = {id(e) for e in entries}
    plain = [e for e in files.plain if id(e) in mine]
    sets = [m for m in files.manifests if m.entry.folder == folder]
    leftovers = [e for e in [*files.covered, *files.orphans] if id(e) in mine]
    if not plain and len(sets) <= 1:  # compacted already: finish what a killed one left
        if not keep:
            res.removed = _remove(leftovers)
        return res if res.removed else None
    inputs = [e for e in files.read if id(e) in mine]
    try:
        table = catalog.dataset(files, schema, hive=False, entries=inputs).to_table()
    except (FileNotFoundError, OSError) as e:  # a status file its driver replaced meanwhile
        res.skipped = f"a file changed while it was read ({e}); run it again"
        return res
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    base = f"{catalog.COMPACTED}{stamp}-{uuid.uuid4().hex[:8]}"
    names = []
    for k, start in enumerate(range(0, max(table.num_rows, 1), max_rows)):
        names.append(f"{base}-{k}.parquet")
        store.write_parquet(table.slice(start, max_rows), storage.join(folder, names[-1]))
    held = [*inputs, *(m.entry for m in sets), *(e for e in leftovers if e not in files.orphans)]
    manifest = {
        "format": catalog.FORMAT,
        "table": files.table,
        "files": names,
        "rows": table.num_rows,
        "columns": table.schema.names,
        "sources": {e.name: e.size for e in held},
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    _write_manifest(storage.join(folder, base + catalog.MANIFEST), manifest)
    res.files_in, res.files_out, res.rows = len(inputs), len(names), table.num_rows
    if not keep:  # only now: the manifest is what makes the new files count
        res.removed = _remove([*held, *(e for e in leftovers if e in files.orphans)])
    return res


def _write_manifest(path: str, manifest: dict) -> None:
    storage.write(path, json.dumps(manifest, indent=0))


def _remove(entries: list[catalog.Entry]) -> int:
    # manifests last: a compaction killed while removing still finds what they held
    entries = sorted(entries, key=catalog.is_manifest)
    for e in entries:
        _remove_file(e.path)
    return len(entries)


def _remove_file(path: str) -> None:
    storage.remove(path)
