"""Images per second: WebDataset shards vs individual files, read + decode + train transform.

Generates a synthetic set (CoOp layout, 256 px JPEGs) in a temporary directory, converts it to
shards, then times one pass over the train split both ways with 1 and 2 loader workers:

- shards: `dplbench.data.shards.eval_loader` (an exact pass) with the CLIP train transform;
- files: a plain map-style Dataset over the split JSON (ImageFolder-like) in a torch DataLoader,
  same transform, same batch size.

Both read from the page cache (the files were just written): this measures the per-sample
overhead of the two paths, not disk or network throughput, where shards gain most.

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
from dplbench.data.shards import collate, eval_loader
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
            for name in ("shards", "files"):
                rates = []
                for _ in range(args.repeats):
                    if name == "shards":
                        loader = eval_loader(view, args.batch, views, nw, rank=0, world_size=1)
                    else:
                        ds = SplitFiles(
                            folder, spec.split_file, spec.image_dir, SampleTransform(views)
                        )
                        loader = torch.utils.data.DataLoader(
                            ds, args.batch, shuffle=True, num_workers=nw, collate_fn=collate
                        )
                    n, dt = _time(loader)
                    assert n == view.num_samples, (name, n)
                    rates.append(n / dt)
                best[name] = max(rates)
            rows.append((nw, best["shards"], best["files"]))
        print(
            f"\n{'workers':>7} | {'shards img/s':>12} | {'files img/s':>11} | {'shards/files':>12}"
        )
        print("-" * 53)
        for nw, s, f in rows:
            print(f"{nw:>7} | {s:>12.0f} | {f:>11.0f} | {s / f:>12.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)  # one intra-op thread per process, as in DataLoader workers
    main()
