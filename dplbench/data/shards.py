"""The evaluation reader: one WebDataset pipeline, split by rank and loader worker inside.

`eval_loader` is an exact single pass, every sample counted exactly once across ranks and loader
workers. With at least ranks x workers shards, each (rank, worker) reads urls[slot::ranks*workers]
(slot = rank * workers + worker); with fewer shards every (rank, worker) reads all shards and keeps
the samples whose position in the stream is slot modulo ranks*workers, so correctness never
depends on the shard count. Sum counts with `all_reduce_counts`. (Training reads exact epochs by
position instead: epochs.py.)

Corrupt data: a shard that cannot be read or a sample that cannot be decoded raises
`CorruptShardError` naming the shard and key (`on_error="raise"`), or is skipped, logged and
counted (`on_error="skip"`; `loader.skipped.value`, summed over workers; a shard cut short
counts its unread samples from the metadata).

Batches are dicts: image [B, 3, S, S] float, clean [B, 3, S, S] (only with `with_clean`),
label [B] long (view labels), key list[str].
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
from collections.abc import Iterator

import torch
import webdataset as wds
from PIL import Image

from dplbench.data import tario
from dplbench.data.errors import CorruptShardError, DataError
from dplbench.data.transforms import SampleTransform, ViewConfig
from dplbench.data.view import DatasetView

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
ON_ERROR = ("raise", "skip")
EVAL_VIEW = ViewConfig(train_view="test")  # resize + centre crop at 224


class SharedCounter:
    """An integer shared by the DataLoader workers and the main process."""

    def __init__(self, value: int = 0) -> None:
        self._v = mp.Value("q", value)

    def add(self, n: int) -> None:
        with self._v.get_lock():
            self._v.value += n

    def set(self, n: int) -> None:
        self._v.value = n

    @property
    def value(self) -> int:
        return self._v.value


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def default_rank_world() -> tuple[int, int]:
    """(rank, world_size) of torch.distributed if initialised, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _ShardSource:
    """First stage: yields {"url", "expected", "modulo"} for this rank and loader worker."""

    def __init__(self, urls, counts, rank, world) -> None:
        self.urls, self.counts, self.rank, self.world = list(urls), list(counts), rank, world

    def __call__(self) -> Iterator[dict]:
        wid, nw = _worker()
        pairs = list(zip(self.urls, self.counts, strict=True))
        slots, slot = self.world * nw, self.rank * nw + wid
        if len(pairs) >= slots:
            for url, n in pairs[slot::slots]:
                yield {"url": url, "expected": n, "modulo": None}
        else:
            for url, n in pairs:
                yield {"url": url, "expected": n, "modulo": (slots, slot)}


class _Expand:
    """Shard -> raw samples; the modulo split; corrupt shards raise or are skipped+counted."""

    def __init__(self, on_error: str, skipped: SharedCounter) -> None:
        self.on_error, self.skipped = on_error, skipped

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        pos = 0  # position in the (rank, worker)-independent stream, for the modulo split
        for shard in src:
            start, got, mine_got = pos, 0, 0
            modulo = shard["modulo"]
            try:
                for sample in tario.iter_samples(shard["url"]):
                    i = start + got
                    got += 1
                    if modulo is None or i % modulo[0] == modulo[1]:
                        mine_got += 1
                        yield sample
            except CorruptShardError as e:
                if self.on_error == "raise":
                    raise
                n = max(shard["expected"], got + 1)
                mine = n if modulo is None else _count_mod(start, start + n, *modulo)
                lost = max(mine - mine_got, 1)
                self.skipped.add(lost)
                log.warning("skipping %d sample(s): %s", lost, e)
                got = n
            pos = start + got


def _count_mod(lo: int, hi: int, m: int, r: int) -> int:
    """How many i in [lo, hi) have i % m == r."""
    return (hi - r + m - 1) // m - (lo - r + m - 1) // m


def decode_image(data: bytes, transform: SampleTransform) -> dict:
    """Encoded image bytes -> {"image", ["clean"]} (RGB, transformed)."""
    with Image.open(io.BytesIO(data)) as img:
        return transform(img.convert("RGB"))


class _Decode:
    """Raw sample -> {"image", ["clean"], "label", "key"}; drops classes outside the view."""

    def __init__(self, lmap, transform, on_error, skipped) -> None:
        self.lmap, self.transform = dict(lmap), transform
        self.on_error, self.skipped = on_error, skipped

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        for sample in src:
            key, url = sample["__key__"], sample["__url__"]
            try:
                orig = int(sample["cls"])
                if orig not in self.lmap:
                    continue
                ext = next((e for e in IMAGE_EXTS if e in sample), None)
                if ext is None:
                    raise ValueError(f"no image among {sorted(sample)}")
                out = decode_image(sample[ext], self.transform)
            except Exception as e:  # any decode failure: name shard and key, never silent
                err = CorruptShardError(url, key, f"{type(e).__name__}: {e}")
                if self.on_error == "raise":
                    raise err from e
                self.skipped.add(1)
                log.warning("skipping: %s", err)
                continue
            out["label"] = self.lmap[orig]
            out["key"] = key
            yield out


def collate(samples: list[dict]) -> dict:
    """List of samples -> batch dict (tensors stacked, keys as a list)."""
    batch = {"image": torch.stack([s["image"] for s in samples])}
    if "clean" in samples[0]:
        batch["clean"] = torch.stack([s["clean"] for s in samples])
    batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    batch["key"] = [s["key"] for s in samples]
    return batch


def _check(view: DatasetView, on_error: str, rank: int, world: int) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    if not view.shard_urls:
        raise DataError(f"{view.dataset}/{view.source}: no shards")


def eval_loader(
    view: DatasetView,
    batch_size: int,
    views: ViewConfig = EVAL_VIEW,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    on_error: str = "raise",
) -> torch.utils.data.DataLoader:
    """An exact single pass over the view, this rank's share (see module doc). The last batch
    may be short. Attributes: `num_samples` (of all ranks), `skipped` (SharedCounter)."""
    if rank is None or world_size is None:
        rank, world_size = default_rank_world()
    _check(view, on_error, rank, world_size)
    skipped = SharedCounter()
    pipeline = wds.DataPipeline(
        _ShardSource(view.shard_urls, view.shard_counts, rank, world_size),
        _Expand(on_error, skipped),
        _Decode(view.label_map, SampleTransform(views), on_error, skipped),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers)
    loader.num_samples = view.num_samples
    loader.skipped = skipped
    return loader


def all_reduce_counts(*counts: int) -> tuple[int, ...]:
    """Counts (correct, total, skipped, ...) summed over ranks when torch.distributed is
    initialised, else as they are. Call it on every rank (it is a collective). Do not run the eval
    forward through a DDP wrapper: ranks see different batch counts; use the wrapped module."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return tuple(int(c) for c in counts)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    t = torch.tensor([int(c) for c in counts], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tuple(int(c) for c in t.tolist())
