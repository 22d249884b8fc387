"""Images per second of one pass over a train split, read + decode + CLIP train transform.

Generates a synthetic set (CoOp layout, 256 px JPEGs) in a temporary directory, converts it to
shards, then times one epoch four ways with 1 and 2 loader workers:

- epochs: `dplbench.data.epochs.train_loader`, the training reader (exact epochs, samples read
  by position from the shards; its one-time shard index is included);
- stream: the training reader it replaced, rebuilt here with webdataset (shards resampled with
  replacement, a 1,000-sample shuffle buffer, `with_epoch`);
- shards: `dplbench.data.shards.eval_loader`, the sequential exact pass used for evaluation;
- files: a plain map-style Dataset over the split JSON (ImageFolder-like).

All read from the page cache (the files were just written): this measures the per-sample
overhead of the paths, not disk or network throughput.

    python tools/bench/bench_data.py [--images 2000] [--size 256] [--batch 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from dplbench.data.convert import ConvertOptions, convert
from dplbench.data.datasets import get_spec
from dplbench.data.epochs import train_loader
from dplbench.data.shards import collate, decode_image, eval_loader
from dplbench.data.synth import make_synthetic
from dplbench.data.transforms import SampleTransform, ViewConfig
from dplbench.data.view import DatasetView


class SplitFiles(torch.utils.data.Dataset):
    """The train list of a CoOp split JSON, one file read per item."""

    def __init__(self, folder: Path, split_file: str, image_dir: str, transform) -> None:
        self.root = folder / image_dir
        self.items = json.loads((folder / split_file).read_text())["train"]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        rel, label, _ = self.items[i]
        with Image.open(self.root / rel) as img:
            out = self.transform(img.convert("RGB"))
        return {**out, "label": label, "key": rel}


def stream_loader(view, batch: int, views: ViewConfig, workers: int):
    """The previous training reader: resampled shards, a shuffle buffer, fixed-size epochs."""
    import webdataset as wds

    transform = SampleTransform(views)

    def sample(s: dict) -> dict:
        return {**decode_image(s["jpg"], transform), "label": int(s["cls"]), "key": s["__key__"]}

    n_batches = view.num_samples // batch
    ds = (
        wds.WebDataset(view.shard_urls, resampled=True, shardshuffle=False, nodesplitter=None)
        .shuffle(1000)
        .map(sample)
        .batched(batch, collation_fn=collate, partial=False)
        .with_epoch(n_batches // max(1, workers))
    )
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)


def _time(loader) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["key"])
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="train images (about)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="best of N passes")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()

    classes = 20
    per_class = round(args.images / classes / 0.6)  # synth splits 60/20/20
    views = ViewConfig(224, train_view="clip")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        folder = make_synthetic(tmp / "data", classes, per_class, args.size, seed=0)
        t1 = time.perf_counter()
        convert(
            tmp / "data",
            ["synthetic"],
            tmp / "shards",
            ConvertOptions(samples_per_shard=100),
            workers=2,
            show_progress=False,
        )
        t2 = time.perf_counter()
        view = DatasetView.open(tmp / "shards", "synthetic", "train")
        spec = get_spec("synthetic")
        print(
            f"{view.num_samples} train images of {args.size}px, {len(view.shard_urls)} shards; "
            f"generate {t1 - t0:.1f}s, convert {t2 - t1:.1f}s (2 processes)"
        )
        rows = []
        for nw in [int(w) for w in args.workers.split(",")]:
            best = {}
            for name in ("epochs", "stream", "shards", "files"):
                rates = []
                for _ in range(args.repeats):
                    t_build = time.perf_counter()
                    expected = view.num_samples
                    if name == "epochs":
                        loader = train_loader(view, args.batch, views, nw, 0, 1, seed=0)
                        expected = loader.num_batches * args.batch
                    elif name == "stream":
                        loader = stream_loader(view, args.batch, views, nw)
                        expected = (view.num_samples // args.batch // max(1, nw)) * nw * args.batch
                    elif name == "shards":
                        loader = eval_loader(view, args.batch, views, nw, rank=0, world_size=1)
                    else:
                        ds = SplitFiles(
                            folder, spec.split_file, spec.image_dir, SampleTransform(views)
                        )
                        loader = torch.utils.data.DataLoader(
                            ds, args.batch, shuffle=True, num_workers=nw, collate_fn=collate
                        )
                    n, dt = _time(loader)
                    if name == "epochs":  # count its one-time shard index too
                        dt = time.perf_counter() - t_build
                    assert n == expected, (name, n, expected)
                    rates.append(n / dt)
                best[name] = max(rates)
            rows.append((nw, best))
        names = ("epochs", "stream", "shards", "files")
        print("\nimages/s, best of", args.repeats)
        print(f"{'workers':>7} | " + " | ".join(f"{n:>7}" for n in names) + " | epochs/stream")
        for nw, best in rows:
            cells = " | ".join(f"{best[n]:>7.0f}" for n in names)
            print(f"{nw:>7} | {cells} | {best['epochs'] / best['stream']:>13.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)  # one intra-op thread per process, as in DataLoader workers
    main()
