"""What a reader reads of a results table: one listing, the compaction manifests, the live files.

A table (`R/rows`, `R/epochs`, `R/status`) holds, in each hive partition folder, the files its
writers published (one per job run, or per driver-run status batch: every name is written once)
and what `dplbench results compact` made of them (results/compact.py):

    compacted-<stamp>-<id>-<k>.parquet     the rows of many files, in one file (or a few)
    compacted-<stamp>-<id>.manifest.json   which files it holds: {"files", "sources", "columns"}

A manifest is published after its data files and is what makes them count: compacted files that
no manifest names are ignored (a compaction killed before its manifest), and a file that a present
manifest names as a source, with the size it had then, is not read again (its rows are in the
compacted files) until the compaction that named it removes it. Readers therefore see every row
once at every moment of a compaction, and a file a writer publishes during one is read as it is.

On an object store a listing is one request per page and every file read is a round trip, so a
reader lists each table once, takes its schema from the project's schemas (plus the columns the
manifests name and the footers of the live files, which it downloads anyway), and fetches the live
files' bytes concurrently; compacted files are read lazily by range (their sizes come from the
listing, so no request asks for them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from dplbench import storage
from dplbench.errors import ConfigError

COMPACTED = "compacted-"
MANIFEST = ".manifest.json"
FORMAT = "dplbench-compaction/1"
FETCH_THREADS = 32  # concurrent reads on an object store (each a round trip; no CPU to speak of)


@dataclass(frozen=True)
class Entry:
    """One file of a table, as the listing gave it."""

    path: str  # full path or URI
    folder: str  # the partition folder it lies in (full)
    name: str
    size: int

    @property
    def is_compacted(self) -> bool:
        return self.name.startswith(COMPACTED)


@dataclass(frozen=True)
class Manifest:
    entry: Entry
    files: tuple[str, ...]  # its data files (names in the same folder)
    sources: dict[str, int]  # name -> size of the files whose rows the data files hold
    columns: tuple[str, ...]  # the data files' columns
    rows: int


@dataclass
class TableFiles:
    """One listing of a table, sorted into what to read and what a compaction left behind."""

    table: str
    folder: str
    read: list[Entry] = field(default_factory=list)  # live files and committed compacted files
    manifests: list[Manifest] = field(default_factory=list)  # committed, not superseded
    covered: list[Entry] = field(default_factory=list)  # held by a present manifest: not read
    orphans: list[Entry] = field(default_factory=list)  # compacted data no manifest names

    @property
    def plain(self) -> list[Entry]:
        """The files of `read` that no manifest holds (a writer's, not a compaction's)."""
        return [e for e in self.read if not e.is_compacted]

    def __bool__(self) -> bool:
        return bool(self.read)

    def partition(self, entry: Entry) -> dict[str, str]:
        """The hive partition values of a file (`suite=smoke/method=coop`), from its path."""
        rel = entry.folder[len(self.folder) :].strip("/").replace("\\", "/")
        return dict(p.split("=", 1) for p in rel.split("/") if "=" in p)

    def folders(self) -> dict[str, list[Entry]]:
        """Every file of the listing (read or not) by partition folder."""
        out: dict[str, list[Entry]] = {}
        for e in [*self.read, *self.covered, *self.orphans, *(m.entry for m in self.manifests)]:
            out.setdefault(e.folder, []).append(e)
        return out


def list_table(folder: str) -> TableFiles:
    """One recursive listing of `folder`, its manifests read (concurrently on an object store)."""
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    except (FileNotFoundError, OSError):
        infos = []
    entries = []
    for i in infos:
        if i.type != pafs.FileType.File or i.base_name.startswith("."):
            continue  # temporary names (storage.write_atomic) and folders
        rel = i.path[len(inner) :].strip("/")
        path = storage.join(folder, rel)
        entries.append(Entry(path, storage.parent(path), i.base_name, int(i.size or 0)))
    return sort_files(folder, entries, read_manifests([e for e in entries if is_manifest(e)]))


def is_manifest(entry: Entry) -> bool:
    return entry.name.startswith(COMPACTED) and entry.name.endswith(MANIFEST)


def read_manifests(entries: list[Entry]) -> list[Manifest]:
    return each(read_manifest, entries)


def read_manifest(entry: Entry) -> Manifest:
    try:
        d = json.loads(storage.read_text(entry.path))
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
        files, sources = tuple(d["files"]), {str(k): int(v) for k, v in d["sources"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"compaction manifest {entry.path} is unreadable ({e}); move it away and run "
            "`dplbench results compact` again"
        ) from None
    for n in (*files, *sources):
        if "/" in n or "\\" in n or n in ("", ".", ".."):  # names only: nothing outside the folder
            raise ConfigError(
                f"compaction manifest {entry.path} names a path outside its folder: {n!r}"
            )
    return Manifest(entry, files, sources, tuple(d.get("columns", ())), int(d.get("rows", 0)))


def sort_files(folder: str, entries: list[Entry], manifests: list[Manifest]) -> TableFiles:
    """The module docstring's rule, applied to one listing."""
    out = TableFiles(storage.name(folder), folder)
    held = {(m.entry.folder, n): size for m in manifests for n, size in m.sources.items()}
    data = {(m.entry.folder, n) for m in manifests for n in m.files}
    present = {(e.folder, e.name) for e in entries}
    for m in manifests:
        if held.get((m.entry.folder, m.entry.name), -1) == m.entry.size:
            continue  # superseded by a later compaction of its folder (listed with `covered`)
        missing = [n for n in m.files if (m.entry.folder, n) not in present]
        if missing:
            raise ConfigError(
                f"compaction manifest {m.entry.path} names files that are gone: {', '.join(missing)}"
                "; restore them, or move the manifest away (its sources are then read again if "
                "they are still there)"
            )
        out.manifests.append(m)
    live = {(m.entry.folder, n) for m in out.manifests for n in m.files}
    for e in sorted(entries, key=lambda e: e.path):
        key = (e.folder, e.name)
        if held.get(key, -1) == e.size:
            out.covered.append(e)
        elif is_manifest(e):
            continue  # read above: committed (`manifests`) or named by a later one (`covered`)
        elif key in live:
            out.read.append(e)
        elif e.name.endswith(".parquet") and e.is_compacted and key not in data:
            out.orphans.append(e)
        elif e.name.endswith(".parquet") and not e.is_compacted:
            out.read.append(e)
    return out


def published(path: str) -> bool:
    """Whether the file at `path` was published: it is there, or a compaction holds its rows."""
    if storage.exists(path):
        return True
    folder, name = storage.parent(path), storage.name(path)
    entries = [
        Entry(p, folder, storage.name(p), 0)
        for p in storage.listdir(folder, f"{COMPACTED}*{MANIFEST}")
    ]
    return any(name in m.sources for m in read_manifests(entries))


# ---------------------------------------------------------------- reading the files


def relation(con, files: TableFiles, name: str, base: pa.Schema, hive: bool = True) -> str:
    """A SQL source over the files a reader reads (`files.read`): DuckDB's own Parquet reader on a
    local root; on an object store a pyarrow dataset registered in `con` as `name`, whose schema is
    `base` (the project's schema of the table, without partition columns) plus the columns the
    manifests and the live files' footers add, and whose live files were fetched concurrently."""
    if not storage.is_uri(files.folder):  # the listed files, not a glob: a glob read later
        # would see what a compaction published since, not yet the manifest that rules it out
        paths = "[" + ", ".join(sql_string(e.path) for e in files.read) + "]"
        return f"read_parquet({paths}, hive_partitioning={str(hive).lower()}, union_by_name=true)"
    con.register(name, dataset(files, base, hive))
    return name


def dataset(files: TableFiles, base: pa.Schema, hive: bool = True, entries=None):
    """The pyarrow dataset of `entries` (default: what a reader reads) of a table: small live files
    fetched whole and concurrently, compacted ones read by range as a scan needs them."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    entries = files.read if entries is None else entries
    fs, _ = storage.filesystem(files.folder)
    compacted = {e.path for e in entries if e.is_compacted}
    blobs = dict(zip(
        [e.path for e in entries if e.path not in compacted],
        each(_fetch, [e for e in entries if e.path not in compacted]),
    ))  # fmt: skip
    paths = {e.path for e in entries}
    columns = {c for m in files.manifests if _data_paths(m) & paths for c in m.columns}
    extra: dict[str, pa.Field] = {}
    for f in (f for b in blobs.values() for f in pq.read_schema(pa.BufferReader(b))):
        if f.name not in base.names:
            extra.setdefault(f.name, f)
    for c in columns - set(base.names) - set(extra):
        extra[c] = pa.field(c, pa.float64())  # loss_<term>, test_<subsample> (store.py)
    fields = list(base) + [extra[c] for c in sorted(extra)]
    keys = sorted({k for e in entries for k in files.partition(e)}) if hive else []
    fields += [pa.field(k, pa.string()) for k in keys if k not in {f.name for f in fields}]
    fmt = ds.ParquetFileFormat()
    frags = []
    for e in entries:
        part = _partition_expression(files.partition(e) if hive else {})
        if e.path in compacted:
            inner = storage.filesystem(e.path)[1]
            frags.append(fmt.make_fragment(inner, fs, part, file_size=e.size))
        else:
            frags.append(fmt.make_fragment(pa.BufferReader(blobs[e.path]), None, part))
    return ds.FileSystemDataset(frags, pa.schema(fields), fmt, fs)


def _data_paths(m: Manifest) -> set[str]:
    return {storage.join(m.entry.folder, n) for n in m.files}


def _partition_expression(values: dict[str, str]):
    import pyarrow.dataset as ds

    expr = None
    for k, v in values.items():
        term = ds.field(k) == v
        expr = term if expr is None else expr & term
    return expr


def _fetch(entry: Entry) -> bytes:
    return storage.read_bytes(entry.path)


def each(fn, items: Iterable, threads: int = FETCH_THREADS) -> list:
    """`fn` of every item, concurrently (each is a round trip on an object store), in order."""
    items = list(items)
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def sql_string(value: str) -> str:
    """A SQL string literal (for paths in views, which take no parameters)."""
    return "'" + str(value).replace("'", "''") + "'"
