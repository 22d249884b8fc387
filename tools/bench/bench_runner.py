"""Per-job start-up on this machine: single-worker jobs as plain Tune trials (reused actors,
cached frozen models) against one TorchTrainer per job, side by side in one run.

For each mode: the smoke suite's wall time, the fixed cost per job (the job's time in its trial
minus its own training and evaluation time, from the result rows), and jobs per minute for a set of
identical short coop jobs, 2 at once.

    RAY_AUTH_MODE=disabled .venv/bin/python tools/bench/bench_runner.py [--jobs 6]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from dplbench.plan.config import parse_overrides
from dplbench.plan.plan import Plan
from dplbench.plan.suites import load_suite
from dplbench.results import store
from dplbench.run.driver import run_plan
from dplbench.run.events import Event, JobEnded, JobStarted
from dplbench.run.prepare import ensure_synthetic
from dplbench.run.settings import ExecOptions, RunSettings


def timed_suite(suite: Plan, data: str, res: str, plain: bool) -> tuple[float, list[float]]:
    """(wall seconds, fixed seconds per job)."""
    started: dict[str, float] = {}
    spans: dict[str, float] = {}

    def on_event(event: Event) -> None:
        now = time.perf_counter()
        if isinstance(event, JobStarted) and event.job_id not in started:
            started[event.job_id] = now
        elif isinstance(event, JobEnded) and event.job_id in started:
            spans[event.job_id] = now - started[event.job_id]

    tic = time.perf_counter()
    settings = RunSettings.local(data, res, loader_workers=0)
    opts = ExecOptions.local(cpus=2, plain_trials=plain)
    summary = run_plan(suite, settings, opts, on_event)
    wall = time.perf_counter() - tic
    assert not summary.failed, [o.error for o in summary.failed]
    rows = store.query(
        settings.root,
        "SELECT job_id, any_value(train_seconds) t, any_value(eval_seconds) e FROM results "
        "GROUP BY job_id",
    ).to_pylist()
    fixed = [spans[r["job_id"]] - r["t"] - r["e"] for r in rows if r["job_id"] in spans]
    return wall, fixed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=6, help="identical coop jobs for jobs/min")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "shards")
        ensure_synthetic(data)
        ray.init(num_cpus=2, log_to_driver=False)
        smoke = load_suite("smoke")
        over = parse_overrides(["optim.epochs=1"])
        seeds = list(range(1, args.jobs + 1))
        coop = load_suite("smoke", {"methods": ["coop"], "seeds": seeds, "overrides": over})
        out = {}
        for mode, plain in (("TorchTrainer per job", False), ("plain trials", True)):
            wall, fixed = timed_suite(smoke, data, str(Path(tmp) / f"s-{plain}"), plain)
            w, _ = timed_suite(coop, data, str(Path(tmp) / f"c-{plain}"), plain)
            out[mode] = (wall, statistics.fmean(fixed), min(fixed), max(fixed), 60 * args.jobs / w)
        print(f"{'mode':<22} | smoke wall s | fixed s/job (mean, min-max) | coop jobs/min")
        for mode, (wall, mean, lo, hi, rate) in out.items():
            print(
                f"{mode:<22} | {wall:>12.1f} | {mean:>8.1f} ({lo:.1f}-{hi:.1f})        | {rate:>13.2f}"
            )
        (_, base, *_), (_, new, *_) = out.values()
        (*_, r0), (*_, r1) = out.values()
        print(f"plain / TorchTrainer: fixed cost {new / base:.2f}x, jobs/min {r1 / r0:.2f}x")
        ray.shutdown()


if __name__ == "__main__":
    main()
