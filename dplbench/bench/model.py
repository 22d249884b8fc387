"""`dplbench bench model`: every method's training step and eval throughput, side by side.

All methods are built on one shared frozen CLIP (random init: no download), timed in one process on
one device, and reported as ratios to `ivlp` (train) and `zsclip` (eval), the targets of issue #2.
Frozen clean-view features are cached per sample key across epochs (a pure function of the image),
so `dpl` is reported both warm (epochs 2..E) and cold (`dpl-nocache`, epoch 1).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from dpl.backbone import BackboneConfig, load_clip
from dpl.methods import METHODS, build_method
from dpl.optim import build_optimizer
from dplbench.plan.methods import resolve_method


@dataclass(frozen=True)
class BenchRequest:
    """What `dplbench bench model` measures (defaults: every registered method)."""

    models: tuple[str, ...] = ("dpl-tiny", "ViT-B-16")
    methods: tuple[str, ...] = ()
    batch: int = 4
    eval_batch: int = 4
    classes: int = 50
    steps: int = 3
    warmup: int = 2
    device: str | None = None
    bf16: bool | None = None


@dataclass
class Measured:
    request: BenchRequest
    rows: list[dict]  # ratio_table rows
    hm: dict[str, float]  # each method's HM in the results root it was given
    calibrations: list[str]  # where this device's calibration was saved


def measure(request: BenchRequest, root=None) -> Measured:
    """Measure, compare (ratio_table) and save this device's calibration (in the user's cache,
    and under the results root `root` when given, whose HMs join the rows)."""
    from dplbench.bench import calibration

    rows = ratio_table(
        bench_models(
            list(request.models), list(request.methods) or None, request.batch,
            request.eval_batch, request.classes, request.steps, request.warmup, request.device,
            request.bf16,
        )
    )  # fmt: skip
    hm = method_hm(root) if root is not None else {}
    dev = torch.device(request.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Measured(request, rows, hm, calibration.save(rows, dev, root))


@dataclass
class BenchRow:
    model: str
    method: str
    train_ms: float | None  # one training step at `batch`
    eval_img_s: float
    peak_mib: float | None  # GPU memory at peak while training and evaluating
    params: int  # trainable parameters
    batch: int
    eval_batch: int


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
    compile_step: str | None = None,
) -> list[BenchRow]:
    """compile_step: also time `dpl` with its training step under torch.compile (this mode or
    backend) as `dpl-compiled`."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_bf16 = dev.type == "cuda" if bf16 is None else bf16
    names = methods or METHODS.names()
    variants = [(m, m) for m in names] + ([("dpl-nocache", "dpl")] if "dpl" in names else [])
    if compile_step and "dpl" in names:
        variants.append(("dpl-compiled", "dpl"))
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
            how = compile_step if label == "dpl-compiled" else None
            train_s = _time_train(model, batch_d, autocast, dev, warmup, steps, how)
            eval_s = _time_eval(model, eval_images, autocast, dev, warmup, steps)
            peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
            params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            rows.append(
                BenchRow(
                    model_name,
                    label,
                    train_s and train_s * 1e3,
                    eval_batch / eval_s,
                    peak,
                    params,
                    batch,
                    eval_batch,
                )  # fmt: skip
            )
    return rows


def _time_train(model, batch, autocast, dev, warmup, steps, how=None) -> float | None:
    from dplbench.run.train_loop import _LossModule, _Step

    if not model.trainable:
        return None
    from dpl.members import Streams

    opt = build_optimizer(model)
    model.train()
    forward = _Step(_LossModule(model), how)  # the train loop's step, compiled or not
    streams = Streams.seeded([0], dev)

    def step():
        opt.zero_grad()
        with autocast:
            loss = forward(batch, 1, 20, streams).sum()
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
                **asdict(r),
                "train_vs_ivlp": r.train_ms / ref_t.train_ms
                if r.train_ms and ref_t and ref_t.train_ms
                else None,
                "eval_vs_zsclip": r.eval_img_s / ref_e.eval_img_s if ref_e else None,
            }
        )
    return out


def method_hm(root) -> dict[str, float]:
    """Each method's base-to-novel Average HM in the results (HM of the averaged base and novel,
    results/aggregate.py)."""
    from dplbench.results import store
    from dplbench.results.aggregate import AVERAGE, base2novel

    table = base2novel(store.latest_rows(root).to_pylist())
    return {r["method"]: r["hm"] for r in table if r["dataset"] == AVERAGE and r["hm"] is not None}
