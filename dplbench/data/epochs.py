"""The training reader: exact epochs over the view's samples, as Dassl and the DPL release draw them.

Every epoch is a fresh permutation of the whole training set, seeded by (job seed, epoch) and the
same on every rank; ranks take interleaved, equal shares of it as `DistributedSampler` does (the
tail that does not divide by the world size is left out, so no sample is drawn twice); each rank
cuts its share into batches of B with the recipe's rule for the last, partial batch:

- "dassl": drop it when the share holds at least one batch (Dassl data_manager.py: drop_last =
  len(data) >= batch_size), so floor(n/B) batches, or one batch of n when n < B;
- "keep": keep it (DroPLe: DataLoader with the default drop_last=False), ceil(n/B) batches.

The shards stay the storage: the reader indexes them once (local tar files by member offset and
read by seek; object-store shards are read once into memory) and reads samples by position. The
sample order is decided in the main process, so it does not depend on the number of loader
workers; each sample's augmentation is seeded by (seed, epoch, position), so neither does that.

Batches are dicts as the evaluation reader's (shards.py): image, [clean], label, key.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tarfile
from dataclasses import dataclass

import torch

from dplbench import storage
from dplbench.data import tario
from dplbench.data.errors import CorruptShardError, DataError
from dplbench.data.shards import IMAGE_EXTS, ON_ERROR, SharedCounter, collate, decode_image
from dplbench.data.transforms import SampleTransform, ViewConfig
from dplbench.data.view import DatasetView

log = logging.getLogger(__name__)
LAST_BATCH = ("dassl", "keep")


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's image is: `size` bytes at `offset` of shard `shard` (local files), or
    the bytes themselves (object stores)."""

    key: str
    label: int  # view label
    shard: int
    ext: str
    offset: int = 0
    size: int = 0
    data: bytes | None = None


def _index_shard(url: str, shard: int, label_map: dict[int, int]) -> list[SampleRef]:
    """The samples of one shard that belong to the view, in stored order."""
    local = not storage.is_uri(url)
    refs: list[SampleRef] = []
    current: dict = {}

    def flush() -> None:
        if current and int(current["cls"]) in label_map:
            ext = next((e for e in IMAGE_EXTS if e in current), None)
            if ext is None:
                raise CorruptShardError(url, current["key"], f"no image among {sorted(current)}")
            off, size, data = current[ext]
            label = label_map[int(current["cls"])]
            refs.append(SampleRef(current["key"], label, shard, ext, off, size, data))

    try:
        if local:
            tf = tarfile.open(url, mode="r:")
        else:
            tf = tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url)), mode="r:")
        with tf:
            for m in tf:
                if not m.isreg():
                    continue
                key, ext = tario.split_name(m.name)
                ext = ext.lower()
                if current and key != current["key"]:
                    flush()
                    current = {}
                current["key"] = key
                if ext == "cls":
                    current["cls"] = tf.extractfile(m).read().decode().strip()
                elif ext in IMAGE_EXTS:
                    data = None if local else tf.extractfile(m).read()
                    current[ext] = (m.offset_data, m.size, data)
            flush()
    except CorruptShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError) as e:
        raise CorruptShardError(url, current.get("key"), f"{type(e).__name__}: {e}") from e
    return refs


def index_view(view: DatasetView, on_error: str, skipped: SharedCounter) -> list[SampleRef]:
    """Every sample of the view, shard by shard in the view's order."""
    refs: list[SampleRef] = []
    for shard, (url, count) in enumerate(zip(view.shard_urls, view.shard_counts)):
        try:
            refs += _index_shard(url, shard, view.label_map)
        except CorruptShardError as e:
            if on_error == "raise":
                raise
            skipped.add(count)
            log.warning("skipping shard (%d samples): %s", count, e)
    return refs


class EpochBatches(torch.utils.data.Sampler):
    """This rank's batches of one epoch, as lists of (epoch, position) pairs (module doc)."""

    def __init__(
        self, n: int, batch_size: int, rank: int, world: int, seed: int, last_batch: str
    ) -> None:
        if last_batch not in LAST_BATCH:
            raise ValueError(f"last_batch must be one of {LAST_BATCH}, got {last_batch!r}")
        self.share = n // world
        if self.share == 0:
            raise DataError(f"{n} training samples cannot be shared by {world} workers")
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.last_batch, self.epoch = seed, last_batch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """This rank's positions in `epoch`: its interleaved share of one permutation."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        return perm[: self.share * self.world][self.rank :: self.world]

    def __len__(self) -> int:
        b = self.batch_size
        if self.last_batch == "keep":
            return math.ceil(self.share / b)
        return self.share // b if self.share >= b else 1

    def __iter__(self):
        mine, b = self.order(self.epoch), self.batch_size
        for i in range(len(self)):
            yield [(self.epoch, p) for p in mine[i * b : (i + 1) * b]]


class EpochDataset(torch.utils.data.Dataset):
    """Samples by position; item (epoch, position) -> decoded, transformed sample (or None when
    skipped as corrupt)."""

    def __init__(self, view, refs, transform, seed, on_error, skipped) -> None:
        self.urls, self.refs, self.transform = list(view.shard_urls), refs, transform
        self.seed, self.on_error, self.skipped = seed, on_error, skipped
        self._files: dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.refs)

    def _read(self, ref: SampleRef) -> bytes:
        if ref.data is not None:
            return ref.data
        if self._pid != os.getpid():  # a loader worker: its own file handles
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(ref.shard)
        if f is None:
            f = self._files[ref.shard] = open(self.urls[ref.shard], "rb")  # noqa: SIM115
        f.seek(ref.offset)
        data = f.read(ref.size)
        if len(data) != ref.size:
            raise EOFError(f"member {ref.key}.{ref.ext} truncated")
        return data

    def __getitem__(self, item: tuple[int, int]) -> dict | None:
        epoch, pos = item
        ref = self.refs[pos]
        # The augmentation of a sample depends on (seed, epoch, position) only, not on which
        # loader worker reads it. In the main process (no loader workers) the caller's RNG
        # state is left as it was.
        in_worker = torch.utils.data.get_worker_info() is not None
        with contextlib.nullcontext() if in_worker else torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed also books lazy CUDA seeding, with a
            # stack trace per call (a third of a sample's cost)
            torch.default_generator.manual_seed(
                hash((self.seed, epoch, pos)) & 0x7FFF_FFFF_FFFF_FFFF
            )
            try:
                out = decode_image(self._read(ref), self.transform)
            except Exception as e:  # any read/decode failure: name shard and key, never silent
                err = CorruptShardError(self.urls[ref.shard], ref.key, f"{type(e).__name__}: {e}")
                if self.on_error == "raise":
                    raise err from e
                self.skipped.add(1)
                log.warning("skipping: %s", err)
                return None
        out["label"], out["key"] = ref.label, ref.key
        return out


def _collate(samples: list[dict | None]) -> dict | None:
    kept = [s for s in samples if s is not None]
    return collate(kept) if kept else None


def train_loader(
    view: DatasetView,
    batch_size: int,
    views: ViewConfig,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    on_error: str = "raise",
    last_batch: str = "dassl",
) -> torch.utils.data.DataLoader:
    """Exact epochs over `view` (module doc). Call `set_epoch(e)` before each epoch. Attributes:
    `num_batches` (per epoch and rank), `num_samples` (the set's size), `skipped`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if not view.shard_urls:
        raise DataError(f"{view.dataset}/{view.source}: no shards")
    skipped = SharedCounter()
    refs = index_view(view, on_error, skipped)
    sampler = EpochBatches(len(refs), batch_size, rank, world_size, seed, last_batch)
    dataset = EpochDataset(view, refs, SampleTransform(views), seed, on_error, skipped)
    # Its own generator: a DataLoader draws its workers' base seed from the global one, at every
    # epoch without workers and once with persistent ones, which would make the training's random
    # stream depend on --loader-workers (the samples reseed from (seed, epoch, position) anyway).
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    loader.num_batches = len(sampler)
    loader.num_samples = len(refs)
    loader.skipped = skipped
    loader.set_epoch = sampler.set_epoch
    return loader
