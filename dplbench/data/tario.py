"""Reading and writing WebDataset tar shards.

A sample is a dict `{"__key__": str, "<ext>": bytes, ...}` stored as consecutive tar members
`<key>.<ext>`. Keys carry no dots (WebDataset splits the key at the first dot). Shards are opened
through the one storage layer (dplbench/storage.py): local files, object stores (`s3://`, `gs://`,
any pyarrow filesystem), `http(s)://` and `pipe:` URLs.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from dplbench import storage
from dplbench.data.errors import CorruptShardError


def split_name(name: str) -> tuple[str, str]:
    """`dir/key.ext.more` -> (`dir/key`, `ext.more`), as WebDataset's `base_plus_ext`."""
    head, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    return (f"{head}/{key}" if head else key), (ext if dot else "")


def iter_samples(url: str) -> Iterator[dict]:
    """Samples of one shard in stored order. A read error raises `CorruptShardError` naming
    the shard and the sample being read; a sample cut short is never yielded."""
    current: dict | None = None
    last_key: str | None = None
    try:
        stream = storage.open_input(url)
    except Exception as e:  # open failures (missing file, failing pipe) name the shard
        raise CorruptShardError(url, None, f"cannot open: {e}") from e
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tf:
            for member in tf:
                if not member.isreg():
                    continue
                key, ext = split_name(member.name)
                if current is not None and key != current["__key__"]:
                    yield current
                    current = None
                last_key = key
                data = tf.extractfile(member).read()
                if len(data) != member.size:
                    raise EOFError(f"member {member.name} truncated")
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext.lower()] = data
    except CorruptShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise CorruptShardError(url, last_key, f"{type(e).__name__}: {e}") from e
    finally:
        stream.close()
    if current is not None:
        yield current


def write_tar(path: str | Path, samples: Iterable[dict]) -> int:
    """Write samples (values bytes; `__`-prefixed keys other than `__key__` dropped) to a tar
    at `path`. Member mtimes are 0 so re-running a conversion gives identical bytes."""
    n = 0
    with tarfile.open(path, "w") as tf:
        for sample in samples:
            key = sample["__key__"]
            for ext, data in sample.items():
                if ext.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mode = 0o444
                tf.addfile(info, io.BytesIO(data))
            n += 1
    return n


class ShardSink:
    """Writes samples to `<directory>/0.tar, 1.tar, ...`, `maxcount` samples per shard."""

    def __init__(self, directory: str | Path, maxcount: int, prefix: str = "") -> None:
        self.dir, self.maxcount, self.prefix = Path(directory), max(1, maxcount), prefix
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[str] = []  # "<prefix><n>.tar"
        self.counts: list[int] = []
        self._tar: tarfile.TarFile | None = None

    def write(self, sample: dict) -> None:
        if self._tar is None or self.counts[-1] >= self.maxcount:
            self._next()
        key = sample["__key__"]
        for ext, data in sample.items():
            if not ext.startswith("__"):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode = len(data), 0o444
                self._tar.addfile(info, io.BytesIO(data))
        self.counts[-1] += 1

    def _next(self) -> None:
        self.close()
        name = f"{len(self.shards)}.tar"
        self._tar = tarfile.open(self.dir / name, "w")
        self.shards.append(self.prefix + name)
        self.counts.append(0)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
