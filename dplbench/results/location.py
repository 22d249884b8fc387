"""Where results live: a local folder, or any pyarrow filesystem URI (`s3://bucket/prefix`,
`gs://...`, `hdfs://...`) for clusters without a shared filesystem.

Every file under the results root is written and read through here. Publishing keeps the
store's guarantee either way: a reader sees a whole file or none. Locally that is a temporary name
renamed into place (`dplbench/atomic.py`); on an object store a single PUT (a multipart upload
completed at close) is already all-or-nothing, and the object's name carries the job and run, so no
write replaces another's. Object-store credentials and endpoints come from the usual environment
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...), as Ray's own storage does.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs

from dplbench.atomic import write_atomic


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(root: str | os.PathLike, *parts: str) -> str:
    if is_uri(root):
        return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root, *parts))


def resolve(root: str | os.PathLike) -> str:
    """An absolute local path, or the URI as it is."""
    return str(root) if is_uri(root) else str(Path(root).resolve())


@functools.cache
def _filesystem(uri_head: str) -> pafs.FileSystem:
    fs, _ = pafs.FileSystem.from_uri(uri_head)
    return fs


def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, the path within it)."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).absolute())
    scheme, rest = path.split("://", 1)
    if scheme in ("s3", "gs", "gcs"):  # one client per bucket; paths are "bucket/key"
        return _filesystem(f"{scheme}://{rest.split('/', 1)[0]}"), rest
    return pafs.FileSystem.from_uri(path)


def write(path: str | os.PathLike, data: str | bytes | Callable[[Path], None]) -> str:
    """Publish `data` (text, bytes, or a function that writes a given local path) at `path`."""
    if not is_uri(path):
        return str(write_atomic(path, data))
    if callable(data):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(str(path)).name
            data(local)
            data = local.read_bytes()
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as out:
        out.write(data.encode() if isinstance(data, str) else data)
    return str(path)


def read_bytes(path: str | os.PathLike) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def exists(path: str | os.PathLike) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def mtime(path: str | os.PathLike) -> float | None:
    """Seconds since the epoch of the last write, None when absent."""
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
    fs, inner = filesystem(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
