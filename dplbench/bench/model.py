"""`dplbench bench model`: every method's training step and eval throughput, side by side.

All methods are built on one shared frozen CLIP (random init: no download), timed in one process on
one device, and reported as ratios to `ivlp` (train) and `zsclip` (eval), the targets of issue #2.
Frozen clean-view features are cached per sample key across epochs (a pure function of the image),
so `dpl` is reported both warm (epochs 2..E) and cold (`dpl-nocache`, epoch 1).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from dpl.backbone import BackboneConfig, load_clip
from dpl.methods import METHODS, build_method
from dpl.optim import build_optimizer
from dplbench.plan.methods import resolve_method


@dataclass
class BenchRow:
    model: str
    method: str
    train_ms: float | None
    eval_img_s: float
    peak_mib: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def bench_models(
    models: list[str],
    methods: list[str] | None = None,
    batch: int = 4,
    eval_batch: int = 4,
    classes: int = 50,
    steps: int = 3,
    warmup: int = 2,
    device: str | None = None,
    bf16: bool | None = None,
) -> list[BenchRow]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_bf16 = dev.type == "cuda" if bf16 is None else bf16
    names = methods or METHODS.names()
    variants = [(m, m) for m in names] + ([("dpl-nocache", "dpl")] if "dpl" in names else [])
    rows = []
    for model_name in models:
        clip = load_clip(BackboneConfig(model=model_name, pretrained=None)).to(dev)
        size = clip.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        g = torch.Generator(device="cpu").manual_seed(0)
        images = torch.randn(batch, 3, size, size, generator=g).to(dev)
        eval_images = torch.randn(eval_batch, 3, size, size, generator=g).to(dev)
        labels = torch.randint(0, classes, (batch,), generator=g).to(dev)
        keys = [f"k{i}" for i in range(batch)]
        names_c = list(IMAGENET_CLASSNAMES[:classes])
        for label, method in variants:
            over = {"backbone": {"model": model_name, "pretrained": None}}
            if label == "dpl-nocache":
                over["cache_frozen_image_features"] = False
            # the method's base-to-novel recipe (configs/methods): its optimiser and schedule
            cfg = resolve_method(method, over, protocol="base2novel", dataset="imagenet")
            model = build_method(cfg, clip).to(dev)
            model.set_classes(names_c, "a photo of a {}.")
            autocast = (
                torch.autocast(dev.type, dtype=torch.bfloat16)
                if use_bf16
                else contextlib.nullcontext()
            )
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            batch_d = {"image": images, "clean": images, "label": labels, "key": keys}
            train_s = _time_train(model, batch_d, autocast, dev, warmup, steps)
            eval_s = _time_eval(model, eval_images, autocast, dev, warmup, steps)
            peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
            rows.append(
                BenchRow(model_name, label, train_s and train_s * 1e3, eval_batch / eval_s, peak)
            )
    return rows


def _time_train(model, batch, autocast, dev, warmup, steps) -> float | None:
    if not model.trainable:
        return None
    opt = build_optimizer(model)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = sum(model.losses(batch, 1, 20).values())
        loss.backward()
        opt.step()

    return _timed(step, dev, warmup, steps)


def _time_eval(model, images, autocast, dev, warmup, steps) -> float:
    model.eval()

    def evaluate():
        with torch.no_grad(), autocast:
            model.logits(images)

    return _timed(evaluate, dev, warmup, steps)


def ratio_table(rows: list[BenchRow]) -> list[dict]:
    """Rows with train time / ivlp's and eval throughput / zsclip's (same model)."""
    out = []
    for r in rows:
        ref_t = next((x for x in rows if x.model == r.model and x.method == "ivlp"), None)
        ref_e = next((x for x in rows if x.model == r.model and x.method == "zsclip"), None)
        out.append(
            {
                "model": r.model,
                "method": r.method,
                "train_ms": r.train_ms,
                "train_vs_ivlp": r.train_ms / ref_t.train_ms
                if r.train_ms and ref_t and ref_t.train_ms
                else None,
                "eval_img_s": r.eval_img_s,
                "eval_vs_zsclip": r.eval_img_s / ref_e.eval_img_s if ref_e else None,
                "peak_mib": r.peak_mib,
            }
        )
    return out
