"""Runner overhead on this machine: the smoke suite's wall time, the fixed cost per job (trial wall
time minus the job's own training and evaluation time), and jobs per minute with 1 vs 2 jobs at
once. Run: RAY_AUTH_MODE=disabled .venv/bin/python tools/bench/bench_runner.py [--jobs 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from dplbench.plan.config import parse_overrides
from dplbench.plan.suites import Suite, load_suite
from dplbench.results import store as results
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.suite import run_suite


def timed_suite(suite: Suite, data: str, res: str, cpus: int) -> tuple[float, dict[str, float]]:
    started: dict[str, float] = {}
    spans: dict[str, float] = {}

    def on_event(job_id: str, state: str, info: dict) -> None:
        now = time.perf_counter()
        if state == "running" and job_id not in started:
            started[job_id] = now
        elif state in ("done", "failed") and job_id in started:
            spans[job_id] = now - started[job_id]

    tic = time.perf_counter()
    summary = run_suite(
        suite,
        RunSettings(data=data, results=res, loader_workers=0),
        ExecOptions(cpus=cpus),
        on_event,
    )
    wall = time.perf_counter() - tic
    assert not summary.failed, [o.error for o in summary.failed]
    return wall, spans


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=4)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "shards")
        ray.init(num_cpus=2, log_to_driver=False)
        smoke = load_suite("smoke")
        wall, spans = timed_suite(smoke, data, str(Path(tmp) / "r0"), cpus=2)
        rows = results.query(
            str(Path(tmp) / "r0"),
            "SELECT job_id, any_value(train_seconds) t, any_value(eval_seconds) e "
            "FROM results GROUP BY job_id",
        ).to_pylist()
        overhead = [spans[r["job_id"]] - r["t"] - r["e"] for r in rows if r["job_id"] in spans]
        print(f"smoke suite ({len(smoke.jobs)} jobs, 2 at once): {wall:.1f} s wall")
        print(
            f"fixed overhead per job (trial wall - train - eval): mean {sum(overhead) / len(overhead):.1f} s, "
            f"min {min(overhead):.1f}, max {max(overhead):.1f}"
        )
        over = parse_overrides(["optim.epochs=1"])
        seeds = list(range(1, args.jobs + 1))
        rate = {}
        for cpus in (1, 2):
            suite = load_suite("smoke", {"methods": ["coop"], "seeds": seeds, "overrides": over})
            w, _ = timed_suite(suite, data, str(Path(tmp) / f"r{cpus}"), cpus=cpus)
            rate[cpus] = 60 * len(suite.jobs) / w
            print(
                f"{len(suite.jobs)} coop jobs, {cpus} at once: {w:.1f} s, {rate[cpus]:.2f} jobs/min"
            )
        print(f"2 vs 1 at once: {rate[2] / rate[1]:.2f}x jobs/min")
        ray.shutdown()


if __name__ == "__main__":
    main()
