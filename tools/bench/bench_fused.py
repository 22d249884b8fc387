"""Fused runs against one job at a time and against packed processes, side by side in one run.

Per method (dpl at batch 4, coop at batch 32: the recipes' batches) and K:
- solo: one job's training step (forward, backward, optimiser) in this process;
- fused: K jobs' step as one batched model (dpl/fused.py); jobs/hour ratio = K · solo / fused;
- packed (the --jobs-per-gpu analogue): K processes, each stepping one job, at once; ratio =
  K · solo / (their wall time per step);
- peak memory per K (GPU: allocator peak; CPU: not measured).
`--cli` adds what a user waits for: `dplbench run --suite smoke --methods dpl` with K seeds at
`--fuse K` against `--fuse 1` (local Ray, this machine's CPUs), jobs/hour end to end.

    RAY_AUTH_MODE=disabled .venv/bin/python tools/bench/bench_fused.py [--models dpl-tiny]
        [--ks 1,2,4,8] [--steps 20] [--cli]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
logging.disable(logging.WARNING)

BATCH = {"dpl": 4, "coop": 32}  # configs/methods: DroPLe and CoOp batch sizes


def _members(method: str, model: str, k: int, classes: int, device: torch.device):
    from dpl.backbone import load_clip
    from dpl.methods import build_method, method_config

    over = {"backbone": {"model": model, "pretrained": None}}
    if model == "dpl-tiny":
        over["prompts"] = {}
    cfg = method_config(method, over)
    clip = load_clip(cfg.backbone).to(device)  # the model library alone: no data stack
    names = [f"class {i}" for i in range(classes)]
    out = []
    for seed in range(1, k + 1):
        torch.manual_seed(seed)
        m = build_method(cfg, clip).to(device)
        m.set_classes(names)
        out.append(m.train())
    return out


def _batches(k: int, batch: int, size: int, classes: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(k):
        image = torch.randn(batch, 3, size, size, generator=g)
        out.append(
            {
                "image": image.to(device),
                "clean": image.to(device),
                "label": torch.randint(classes, (batch,), generator=g).to(device),
                "key": [f"{i}-{j}" for j in range(batch)],
            }
        )
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_ms(method, model, k, steps, warmup, classes, device, bf16) -> tuple[float, float | None]:
    """(ms per step of K fused jobs, or of one solo job when k == 1; GPU peak MiB)."""
    from dpl.fused import FusedRuns

    members = _members(method, model, k, classes, device)
    size = members[0].clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    batches = _batches(k, BATCH[method], size, classes, device)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]) for m in members]
    runs = FusedRuns(members, list(range(k)), device) if k > 1 else None
    cast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            tic = time.perf_counter()
        with cast:
            if runs is None:
                losses = [sum(members[0].losses(batches[0], 0, 1).values())]
            else:
                losses = [sum(t.values()) for t in runs.losses(batches, 0, [1] * k)]
        for o in opts:
            o.zero_grad(set_to_none=True)
        sum(losses).backward()
        for o in opts:
            o.step()
    _sync(device)
    ms = 1000 * (time.perf_counter() - tic) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return ms, peak


def _child(args, queue) -> None:
    torch.set_num_threads(1)
    queue.put(step_ms(*args)[0])


def packed_ms(method, model, k, steps, warmup, classes, device, bf16) -> float:
    """Wall ms per step when K processes each step one job at once (all started together)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (method, model, 1, steps, warmup, classes, device, bf16)
    procs = [ctx.Process(target=_child, args=(args, queue)) for _ in range(k)]
    for p in procs:
        p.start()
    times = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)  # the slowest process's step time: K steps done per that


def cli_jobs_per_hour(k: int, epochs: int) -> tuple[float, float]:
    """Jobs/hour of `dplbench run --suite smoke --methods dpl` with K seeds, --fuse 1 and K."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = []
    with tempfile.TemporaryDirectory() as tmp:

        def run(methods: str, seeds: str, fuse: int, results: str) -> None:
            cmd = [sys.executable, "-m", "dplbench.cli", "run", "--suite", "smoke", "--methods",
                   methods, "--seeds", seeds, "--fuse", str(fuse), "--data", f"{tmp}/shards",
                   "--results", results, "--loader-workers", "0", f"optim.epochs={epochs}"]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)

        run("zsclip", "1", 1, f"{tmp}/warm")  # the synthetic shards, made once, untimed
        seeds = ",".join(str(s) for s in range(1, k + 1))
        for fuse in (1, k):
            tic = time.perf_counter()
            run("dpl", seeds, fuse, f"{tmp}/r{fuse}")
            out.append(3600 * k / (time.perf_counter() - tic))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dpl-tiny")
    ap.add_argument("--methods", default="dpl,coop")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-packed", action="store_true", help="skip the K-process analogue")
    ap.add_argument("--cli", action="store_true", help="also the smoke suite through the CLI")
    args = ap.parse_args()
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core per job, as a packed process gets
    ks = [int(k) for k in args.ks.split(",")]
    print(f"{device}, {'bf16' if bf16 else 'fp32'}, {args.classes} classes, {args.steps} steps")
    print("| model | method | K | ms/step | fused × solo | packed × solo | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for method in args.methods.split(","):
            solo = None
            for k in ks:
                ms, peak = step_ms(
                    method, model, k, args.steps, args.warmup, args.classes, device, bf16
                )
                solo = ms if k == 1 else solo
                packed = "-"
                if k > 1 and not args.no_packed:
                    pms = packed_ms(
                        method, model, k, args.steps, args.warmup, args.classes, device, bf16
                    )
                    packed = f"{k * solo / pms:.2f}"
                fused = f"{k * solo / ms:.2f}" if solo else "-"
                mib = "-" if peak is None else f"{peak:.0f}"
                print(f"| {model} | {method} | {k} | {ms:.1f} | {fused} | {packed} | {mib} |")
    if args.cli:
        for k in [k for k in ks if k > 1]:
            solo, fused = cli_jobs_per_hour(k, epochs=10)
            print(f"CLI smoke dpl, {k} seeds: --fuse 1 {solo:.0f} jobs/h, --fuse {k} "
                  f"{fused:.0f} jobs/h ({fused / solo:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
