"""The driver at scale: what planning and driving cost per unit as the number of units grows.

A no-op method (a plug-in registered here: zero-shot CLIP under another name, tiny random-init
CLIP, nothing to train) over N seeds of the smoke suite's synthetic data, so every unit is one
small evaluation and what grows with N is the harness. Per N and mode (`--no-ray`, local Ray):
planning seconds, wall seconds, the jobs' own seconds (their rows' wall_seconds), the driver's
overhead per unit ((wall - jobs' seconds) / N; with Ray the jobs run beside the driver, so this
is the driver's wall per unit), the driver process's CPU seconds per unit, status-file writes per
job, and the driver's peak RSS. Side by side in one run; no timing asserts (docs/benchmarks.md §1).

    .venv/bin/python tools/bench/bench_driver.py [--ns 100,1000] [--modes no-ray,ray]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
logging.disable(logging.WARNING)

PLUGIN = '''
"""A method that trains nothing: zero-shot CLIP under another name (tools/bench/bench_driver.py)."""
from dataclasses import replace

from dpl.methods import METHODS, register

register("noop", replace(METHODS.get("zsclip").defaults, method="noop"), plugins=False,
         trains=False)
'''


def _suite(folder: Path, n: int) -> Path:
    path = folder / f"noop-{n}.yaml"
    path.write_text(
        "protocol: base2novel\ndatasets: [synthetic]\nmethods: [noop]\n"
        f"seeds: [{', '.join(str(s) for s in range(1, n + 1))}]\nshots: [8]\n"
        "data: {synthesize: true}\n"
        "overrides: {backbone: {model: dpl-tiny, pretrained: null}}\n"
    )
    return path


def measure(n: int, mode: str, folder: Path, data: str) -> dict:
    import dplbench
    from dplbench.results import status as status_mod
    from dplbench.results import store
    from dplbench.results.root import ResultsRoot

    books = []
    real_init = status_mod.StatusBook.__init__

    def counting(self, *a, **k):
        real_init(self, *a, **k)
        books.append(self)

    status_mod.StatusBook.__init__ = counting
    results = folder / f"results-{mode}-{n}"
    request = dplbench.LaunchRequest.of(
        suite=str(_suite(folder, n)), plugins=("bench_noop",), data=data, results=str(results),
        use_ray=mode != "no-ray", loader_workers=0,
    )  # fmt: skip
    cpu0, t0 = time.process_time(), time.perf_counter()
    plan = dplbench.plan_of(request)
    planned = time.perf_counter() - t0
    result = dplbench.execute(plan, request)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    status_mod.StatusBook.__init__ = real_init
    assert not result.failed, [o.error for o in result.summary.failed][:2]
    jobs_s = store.query(
        ResultsRoot(results), "SELECT sum(w) s FROM (SELECT any_value(wall_seconds) w FROM results "
        "GROUP BY job_id)",
    ).column("s")[0].as_py()  # fmt: skip
    writes = sum(b.writes for b in books)
    return {
        "n": n, "mode": mode, "plan_s": planned, "wall_s": wall, "jobs_s": jobs_s,
        "overhead_per_unit_ms": 1e3 * (wall - (jobs_s if mode == "no-ray" else 0)) / n,
        "driver_cpu_per_unit_ms": 1e3 * cpu / n, "status_writes_per_job": writes / n,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def live_table(n: int) -> dict:
    """The live table's cost per unit over N jobs' events (started, an epoch, ended): as it
    runs (Live redraws a capped table 4 times a second), beside a redraw of the whole table on
    every event (what it did before), both into a log file."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from dplbench.cli import live
    from dplbench.run.events import EpochDone, JobEnded, JobStarted

    ev = SimpleNamespace(dataset="synthetic", subsample="base")
    jobs = [SimpleNamespace(id=f"{i:016x}", method="noop", protocol="base2novel", evals=[ev],
                            trains=False, train=ev, seed=i, params={}, epochs=1)
            for i in range(n)]  # fmt: skip
    events = [
        e for j in jobs for e in (JobStarted(j.id), EpochDone(j.id, 0), JobEnded(j.id, "done"))
    ]
    out = {}
    real = live.console
    live.console = Console(file=io.StringIO(), width=200)
    try:
        t0 = time.perf_counter()
        with live.live(live.JobTable(jobs)) as on_event:
            for e in events:
                on_event(e)
        out["live ms/unit"] = 1e3 * (time.perf_counter() - t0) / n
        if n <= 300:  # quadratic: 10^3 already takes an hour
            table = live.JobTable(jobs)
            t0 = time.perf_counter()
            for e in events:
                table.event(e)
                live.console.print(_whole(table))
            out["redraw per event ms/unit"] = 1e3 * (time.perf_counter() - t0) / n
    finally:
        live.console = real
    return out


def _whole(table):
    """The table with every job's line (no ROWS cap), as before."""
    from dplbench.cli import live

    rows, live.ROWS = live.ROWS, len(table.jobs)
    try:
        return table.render()
    finally:
        live.ROWS = rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="100,1000", help="units per run")
    ap.add_argument("--modes", default="no-ray,ray", help="no-ray, ray and/or live (the table)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench_noop.py").write_text(PLUGIN)
        sys.path.insert(0, str(folder))  # the driver imports it, and so do Ray's workers:
        os.environ["PYTHONPATH"] = f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        from dplbench.run.prepare import ensure_synthetic

        data = str(folder / "shards")
        ensure_synthetic(data)
        print("| mode | N | plan s | wall s | jobs' own s | overhead ms/unit | driver CPU ms/unit "
              "| status writes/job | peak RSS MiB |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
        if "live" in args.modes.split(","):
            for n in args.ns.split(","):
                print(f"| live table | {int(n):,} | " + " | ".join(
                    f"{k} {v:.2f}" for k, v in live_table(int(n)).items()) + " |", flush=True)  # fmt: skip
        for mode in (m for m in args.modes.split(",") if m != "live"):
            for n in args.ns.split(","):
                r = measure(int(n), mode, folder, data)
                print(f"| {r['mode']} | {r['n']:,} | {r['plan_s']:.2f} | {r['wall_s']:.1f} | "
                      f"{r['jobs_s']:.1f} | {r['overhead_per_unit_ms']:.1f} | "
                      f"{r['driver_cpu_per_unit_ms']:.1f} | {r['status_writes_per_job']:.3f} | "
                      f"{r['peak_rss_mib']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
