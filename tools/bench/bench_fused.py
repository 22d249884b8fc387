"""Fused runs against one job at a time, counted and timed side by side in one run.

Per method and K (docs/benchmarks.md §1), one training step (forward, backward, optimiser step)
of K members as one model (dpl/members.py; K = 1 is a run alone):
- dispatched aten ops and autograd nodes per step, counted (TorchDispatchMode; the graph of the
  step's loss), and their fit a + b·K: b is what one more member costs;
- wall ms per step, fused K against K solo steps, both at one thread (--threads);
- the MAG re-association's speed-up of a solo dpl step (the direct formula swapped back in).
`--cli K`: what a user waits for, `dplbench run --suite smoke --methods dpl --seeds 1..K
--no-ray` at --fuse 1 and --fuse K in this process: aten ops of the whole run and wall time.
`--device cuda` measures on a GPU (bf16; tools/bench/device_check.py calls `fused_curve`).

    .venv/bin/python tools/bench/bench_fused.py [--methods dpl,coop] [--ks 1,2,4,8,16]
        [--model dpl-tiny] [--steps 10] [--cli 8]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
logging.disable(logging.WARNING)

BATCH = {"dpl": 4, "coop": 32, "ivlp": 4, "promptsrc": 4, "maple": 4, "dpl-release": 4}


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside the block (views and in-place ops included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def autograd_nodes(t: torch.Tensor) -> int:
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo += [f for f, _ in fn.next_functions]
    return len(seen)


class Step:
    """One method's training step over K members on a random-init model (no data reader)."""

    def __init__(self, method: str, model: str, k: int, classes: int, device: torch.device):
        from dpl.backbone import load_clip
        from dpl.members import Streams
        from dpl.methods import build_method, method_config
        from dpl.optim import build_optimizer

        over = {"backbone": {"model": model, "pretrained": None}}
        cfg = method_config(method, over)
        self.clip = load_clip(cfg.backbone).to(device)
        gens = [torch.Generator().manual_seed(s) for s in range(1, k + 1)]
        self.model = build_method([cfg] * k if k > 1 else cfg, self.clip, gens).to(device)
        self.model.set_classes([f"class {i}" for i in range(classes)])
        self.model.train()
        self.opt = build_optimizer(self.model)
        self.streams = Streams.seeded(list(range(1, k + 1)), device)
        size = self.clip.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        g = torch.Generator().manual_seed(0)
        b = BATCH.get(method, 4) * k
        image = torch.randn(b, 3, size, size, generator=g).to(device)
        self.batch = {
            "image": image, "clean": image, "key": [f"k{i}" for i in range(b)],
            "label": torch.randint(classes, (b,), generator=g).to(device),
        }  # fmt: skip
        self.device, self.bf16 = device, device.type == "cuda"

    def __call__(self, count: bool = False) -> tuple[int, int]:
        """One step; with `count`, (aten ops, autograd nodes) of it."""
        counter = OpCounter()
        cast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with counter if count else _nothing(), cast:
            terms = self.model.member_losses(self.batch, 1, 20, self.streams)
            loss = terms.values.sum()
            nodes = autograd_nodes(loss) if count else 0
            _ = terms.values.detach().cpu()  # the step's one host read
            self.opt.zero_grad()
            loss.backward()
            self.opt.set_lr(1, 0, 10)
            self.opt.step()
        return counter.total, nodes


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_ms(step: Step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    _sync(step.device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(step.device)
    return 1000 * (time.perf_counter() - tic) / steps


def fit(ks: list[int], values: list[float]) -> tuple[float, float]:
    """Least squares a + b·K."""
    n = len(ks)
    mk, mv = sum(ks) / n, sum(values) / n
    var = sum((k - mk) ** 2 for k in ks) or 1.0
    b = sum((k - mk) * (v - mv) for k, v in zip(ks, values)) / var
    return mv - b * mk, b


def fused_curve(methods, model, ks, steps, warmup, classes, device) -> list[dict]:
    rows = []
    for method in methods:
        solo_ms = None
        for k in ks:
            step = Step(method, model, k, classes, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            step()
            ops, nodes = step(count=True)
            ms = step_ms(step, steps, warmup)
            solo_ms = ms if k == 1 else solo_ms
            peak = (
                torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            )
            rows.append({"method": method, "k": k, "ops": ops, "nodes": nodes, "ms": ms,
                         "x_solo": k * solo_ms / ms if solo_ms else None, "peak_mib": peak})  # fmt: skip
            del step
    return rows


def _direct_mag():
    """The bridge as it was before re-association: every token projected to d, every class's
    aggregate (the reference the re-associated one is checked against, tests/test_members.py)."""
    from dpl.mag import MAGBridge
    from dpl.members import by_member, rows_of

    def attend(self, x, modality, valid):
        proj = self.proj[modality]
        k = self.members
        z = proj(by_member(x, k).reshape(k, -1, x.shape[-1])).reshape(*x.shape[:2], -1)
        zk = by_member(z, k)
        logits = torch.einsum("kmd,knsd->knms", self.tokens.to(z.dtype), zk)
        logits = self.tau * rows_of(logits).float()
        if modality != "text" or not self.all_text:
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        self._z = z
        return logits.softmax(-1).to(x.dtype)

    def aggregate(self, attn, x, modality, rows):
        out = torch.bmm(attn, self._z)  # every row's aggregate [K·N,M,d]
        return out if rows is None else out[rows]

    return MAGBridge, attend, aggregate


def mag_speedup(model, steps, warmup, device) -> tuple[float, float]:
    bridge, attend, aggregate = _direct_mag()
    new = step_ms(Step("dpl", model, 1, 50, device), steps, warmup)
    saved = bridge.attend, bridge.aggregate
    bridge.attend, bridge.aggregate = attend, aggregate
    try:
        old = step_ms(Step("dpl", model, 1, 50, device), steps, warmup)
    finally:
        bridge.attend, bridge.aggregate = saved
    return old, new


def cli_run(k: int, fuse: int, data: str, results: str) -> tuple[int, float]:
    """`dplbench run --suite smoke --methods dpl --seeds 1..k --no-ray --fuse F` in this
    process: (aten ops of the whole run, wall seconds)."""
    from dplbench.plan import plan_of
    from dplbench.request import LaunchRequest
    from dplbench.run import execute

    # The default loader workers: images are decoded in their processes, as in any real run,
    # and what is counted is the training process's own work.
    request = LaunchRequest.of(
        suite="smoke", methods=("dpl",), seeds=tuple(range(1, k + 1)), use_ray=False,
        fuse=str(fuse), data=data, results=results,
    )  # fmt: skip
    plan = plan_of(request)
    counter = OpCounter()
    tic = time.perf_counter()
    with counter:
        result = execute(plan, request)
    wall = time.perf_counter() - tic
    assert not result.failed, [o.error for o in result.summary.failed]
    return counter.total, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dpl-tiny")
    ap.add_argument("--methods", default="dpl,coop")
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cli", type=int, default=0, help="also the smoke suite end to end, K seeds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ks = [int(k) for k in args.ks.split(",")]
    methods = args.methods.split(",")
    print(f"{device}, {args.threads} thread(s), {args.model}, {args.classes} classes")
    rows = fused_curve(methods, args.model, ks, args.steps, args.warmup, args.classes, device)
    print("| method | K | aten ops / step | autograd nodes | ms / step | fused × K solo |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        x = "-" if r["x_solo"] is None or r["k"] == 1 else f"{r['x_solo']:.2f}"
        print(f"| {r['method']} | {r['k']} | {r['ops']} | {r['nodes']} | {r['ms']:.1f} | {x} |")
    print("\n| method | ops a + b·K | b / solo ops | nodes a + b·K | 8 fused / 8 solo ops |")
    print("|---|---|---|---|---|")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        a, b = fit([r["k"] for r in mine], [r["ops"] for r in mine])
        na, nb = fit([r["k"] for r in mine], [r["nodes"] for r in mine])
        solo = mine[0]["ops"]
        eight = (a + 8 * b) / (8 * solo)
        print(f"| {method} | {a:.0f} + {b:.1f}·K | {b / solo:.1%} | {na:.0f} + {nb:.1f}·K | "
              f"{eight:.3f} |")  # fmt: skip
    if "dpl" in methods:
        old, new = mag_speedup(args.model, args.steps, args.warmup, device)
        print(f"\nMAG re-association, solo dpl step: {old:.1f} -> {new:.1f} ms ({old / new:.2f}x)")
    if args.cli:
        from dplbench.run.prepare import ensure_synthetic

        with tempfile.TemporaryDirectory() as tmp:
            data = f"{tmp}/shards"
            ensure_synthetic(data)
            cli_run(1, 1, data, f"{tmp}/warm")  # imports, frozen CLIP: untimed
            out = {f: cli_run(args.cli, f, data, f"{tmp}/r{f}") for f in (1, args.cli)}
        (ops1, wall1), (opsk, wallk) = out[1], out[args.cli]
        print(f"\nsmoke dpl, {args.cli} seeds, --no-ray: --fuse 1 {ops1:,} ops {wall1:.1f} s; "
              f"--fuse {args.cli} {opsk:,} ops {wallk:.1f} s; ops {opsk / ops1:.3f}x, "
              f"wall {wallk / wall1:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
