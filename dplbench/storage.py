"""Every file the harness reads or writes, local or remote, goes through here: one storage layer.

A location is a local path, or a URI: any pyarrow filesystem (`s3://bucket/prefix`, `gs://...`,
`hdfs://...`) for clusters without a shared filesystem, and, for reading shards only, what
WebDataset's `gopen` opens (`http(s)://...`, `pipe:CMD`).

Publishing keeps one guarantee everywhere: a reader sees a whole file or none. Locally that is a
temporary name in the same folder renamed into place (`write_atomic`); on an object store a single
PUT (a multipart upload completed at close) is already all-or-nothing. Object-store credentials
and endpoints come from the usual environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...), as
Ray's own storage does.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs as pafs

Data = str | bytes | Callable[[Path], None]
# Schemes pyarrow has no filesystem for: streamed through WebDataset's gopen (read-only).
_GOPEN_SCHEMES = ("http://", "https://", "pipe:")


def is_uri(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" in s or s.startswith("pipe:")


def join(root: str | os.PathLike, *parts: str) -> str:
    if is_uri(root):
        return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root, *parts))


def resolve(root: str | os.PathLike) -> str:
    """An absolute local path, or the URI as it is."""
    return str(root) if is_uri(root) else str(Path(root).resolve())


def parent(path: str | os.PathLike) -> str:
    if is_uri(path):
        return str(path).rstrip("/").rsplit("/", 1)[0]
    return str(Path(path).parent)


def name(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


@functools.cache
def _filesystem(uri_head: str) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(uri_head)
    # Registered after pyarrow's own exit handler, so it runs before it: an S3 client still
    # alive when pyarrow finalizes S3 aborts the process at exit ("terminate called ...").
    atexit.register(_filesystem.cache_clear)
    return fs


def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, the path within it)."""
    import pyarrow.fs as pafs

    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).absolute())
    scheme, rest = path.split("://", 1)
    if scheme in ("s3", "gs", "gcs"):  # one client per bucket; paths are "bucket/key"
        return _filesystem(f"{scheme}://{rest.split('/', 1)[0]}"), rest
    return pafs.FileSystem.from_uri(path)


def write_atomic(path: str | os.PathLike, data: Data) -> Path:
    """Write `data` (text, bytes, or a function that writes a given path) under a temporary name
    in the same folder, then rename it into place. The temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write(path: str | os.PathLike, data: Data) -> str:
    """Publish `data` (text, bytes, or a function that writes a given local path) at `path`."""
    if not is_uri(path):
        return str(write_atomic(path, data))
    if callable(data):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / name(path)
            data(local)
            data = local.read_bytes()
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as out:
        out.write(data.encode() if isinstance(data, str) else data)
    return str(path)


def open_input(path: str | os.PathLike) -> IO[bytes]:
    """A binary stream of the file (shards are read as streams: nothing is staged on disk)."""
    s = str(path)
    if not is_uri(s):
        return open(s, "rb")  # noqa: SIM115 - the caller closes it
    if s.startswith(_GOPEN_SCHEMES):
        from webdataset.gopen import gopen

        return gopen(s, "rb")
    fs, inner = filesystem(s)
    return fs.open_input_stream(inner)


def read_bytes(path: str | os.PathLike) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    with open_input(path) as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def exists(path: str | os.PathLike) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def mtime(path: str | os.PathLike) -> float | None:
    """Seconds since the epoch of the last write, None when absent."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        return None
    return info.mtime.timestamp() if info.mtime is not None else None


def remove(path: str | os.PathLike) -> None:
    fs, inner = filesystem(path)
    try:
        fs.delete_file(inner)
    except (FileNotFoundError, OSError):
        pass


def listdir(path: str | os.PathLike, pattern: str = "*", recursive: bool = False) -> list[str]:
    """Files under `path` whose base name matches `pattern`, as full paths/URIs, sorted."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=recursive))
    except (FileNotFoundError, OSError):
        return []
    names = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, pattern)
    ]
    return sorted(join(path, n[len(inner) :].lstrip("/")) for n in names)


def subdirs(path: str | os.PathLike) -> list[str]:
    """Names of the folders directly under `path` (object stores: common prefixes)."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def local_dir(path: str | os.PathLike, fallback: str) -> Path:
    """`path` itself when local; else a folder of this machine (`fallback` under the temporary
    folder) for what must live on a local disk (appended logs, file-based trackers)."""
    if is_uri(path):
        return Path(tempfile.gettempdir(), fallback)
    return Path(path)
