"""The GPU check of the throughput work, as one script for a lent GPU machine (docs/benchmarks.md §1).

1. `bench_models` on ViT-B-16 (random init, bf16): train step at batch 4 of ivlp and dpl (cached
   and not), eval throughput at batch 4 and 64, ratios to ivlp / zsclip, peak memory; last,
   dpl with its step under torch.compile(mode="reduce-overhead") (slow to compile).
2. Jobs per hour on one GPU for 1, 2, 4 and 8 jobs per GPU: the `packing` suite (8 identical short
   ViT-B/16 dpl jobs on synthetic 224 px data) run with --jobs-per-gpu N, each from a fresh
   results root; the ratio of N=8 to N=1.
3. The fused curve (tools/bench/bench_fused.py): dpl (batch 4) and coop (batch 32) on ViT-B/16,
   bf16, K = 1, 2, 4, 8, 16, 32 jobs as one model of members: aten ops and ms per step,
   jobs/hour against one job per GPU (the targets: >= 6x at K = 8, >= 15x at K = 16-32), peak
   memory.

Writes Markdown to stdout and $OUT/device_check.md (and the bench rows as JSON) when OUT is set.
    python tools/bench/device_check.py [--skip-bench] [--skip-packing] [--skip-fused] [--skip-compile]
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import torch

logging.disable(logging.WARNING)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dplbench.bench.model import bench_models, ratio_table  # noqa: E402

out: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    out.append(line)
    if os.environ.get("OUT"):  # as it goes: a run stopped at its time limit keeps what it measured
        with open(os.path.join(os.environ["OUT"], "device_check.md"), "a") as fh:
            fh.write(line + "\n")


def bench(methods: list[str], compile_step: str | None = None) -> list[dict]:
    rows_all = []
    for eval_batch in (4, 64) if compile_step is None else (4,):
        rows = ratio_table(
            bench_models(
                ["ViT-B-16"], methods, batch=4, eval_batch=eval_batch,
                classes=50, steps=60, warmup=10, compile_step=compile_step,
            )
        )  # fmt: skip
        how = f", step compiled ({compile_step})" if compile_step else ", eager"
        say(f"\n## bf16, train batch 4, eval batch {eval_batch}, 50 classes{how}\n")
        say("| method | params | train ms | × ivlp | eval img/s | × zsclip | peak MiB |")
        say("|---|---|---|---|---|---|---|")
        for r in rows:
            f = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
            say(
                f"| {r['method']} | {r['params']:,} | {f(r['train_ms'], '.2f')} | "
                f"{f(r['train_vs_ivlp'], '.3f')} | {f(r['eval_img_s'], '.1f')} | "
                f"{f(r['eval_vs_zsclip'], '.3f')} | {f(r['peak_mib'], '.0f')} |"
            )
        rows_all += rows
    return rows_all


def packing() -> dict[int, float]:
    import ray

    from dplbench.plan.suites import load_suite
    from dplbench.run.driver import run_plan
    from dplbench.run.prepare import ensure_synthetic
    from dplbench.run.settings import ExecOptions, RunSettings

    suite = load_suite("packing")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "shards")
        ensure_synthetic(data)
        cpus = os.cpu_count() or 8
        ray.init(num_cpus=cpus, num_gpus=1, log_to_driver=False)
        say(f"\n## jobs per hour on one GPU: {len(suite.jobs)} identical dpl jobs (ViT-B/16)\n")
        say("| jobs per GPU | wall s | jobs/hour | × N=1 |")
        say("|---|---|---|---|")
        for n in (1, 2, 4, 8):
            settings = RunSettings.local(data, os.path.join(tmp, f"r{n}"), loader_workers=1)
            opts = ExecOptions.local(gpus=1, cpus=cpus, jobs_per_gpu=n, cpus_per_worker=1.0)
            tic = time.time()
            summary = run_plan(suite, settings, opts)
            wall = time.time() - tic
            failed = [o.error for o in summary.failed]
            rates[n] = 3600 * (len(suite.jobs) - len(failed)) / wall
            say(f"| {n} | {wall:.1f} | {rates[n]:.0f} | {rates[n] / rates[1]:.2f} |")
            if failed:
                say(f"failures at N={n}: {failed[:2]}")
        ray.shutdown()
    say(f"\nN=8 / N=1 jobs/hour: {rates[8] / rates[1]:.2f} (target >= 4)")
    return rates


def fused(methods: list[str], ks: list[int], steps: int = 20) -> list[dict]:
    """The fused curve (tools/bench/bench_fused.py): K members as one model, ViT-B/16, bf16."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_fused import fused_curve

    device = torch.device("cuda")
    say("\n## fused runs: ViT-B/16, bf16, 50 classes (tools/bench/bench_fused.py)\n")
    say("| method | K | aten ops / step | ms / step | jobs/hour × one job per GPU | peak MiB |")
    say("|---|---|---|---|---|---|")
    rows = []
    for method in methods:
        for k in ks:
            try:
                (row,) = fused_curve([method], "ViT-B-16", [k], steps, 5, 50, device)
            except torch.cuda.OutOfMemoryError:
                say(f"| {method} | {k} | out of memory | | | |")
                break
            solo = next((r["ms"] for r in rows if r["method"] == method and r["k"] == 1), row["ms"])
            row["x_solo"] = k * solo / row["ms"]
            rows.append(row)
            say(f"| {method} | {k} | {row['ops']} | {row['ms']:.1f} | {row['x_solo']:.2f} | "
                f"{row['peak_mib']:.0f} |")  # fmt: skip
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-packing", action="store_true")
    ap.add_argument("--skip-fused", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--methods", default="dpl,coop", help="fused curve: methods")
    ap.add_argument("--ks", default="1,2,4,8,16,32", help="fused curve: group sizes")
    args = ap.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    t0 = time.time()
    say(f"# device check: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    fused_rows = [] if args.skip_fused else fused(args.methods.split(","), ints(args.ks))
    rows = [] if args.skip_bench else bench(["zsclip", "ivlp", "dpl"])
    try:
        import ray  # noqa: F401
    except ImportError:  # the lent machine's image has no Ray: packing stays unmeasured there
        args.skip_packing = True
        say("\nno Ray on this machine: jobs per hour with --jobs-per-gpu not measured")
    rates = {} if args.skip_packing else packing()
    # last: compiling ViT-B/16's step under reduce-overhead took over 5 minutes on an H200
    # (2026-12-04), so a run stopped at its limit keeps everything above
    if not args.skip_bench and not args.skip_compile:
        rows += bench(["ivlp", "dpl"], compile_step="reduce-overhead")
    say(f"\nwall {time.time() - t0:.0f} s")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "device_check.json"), "w") as fh:
            json.dump({"bench": rows, "jobs_per_hour": rates, "fused": fused_rows}, fh, indent=1)


if __name__ == "__main__":
    main()
