"""What a user waits for at the command line, this code against an earlier commit, side by side.

For each version, alternately, `repeats` times:
- `dplbench --help` and `dplbench run --help`: wall seconds of the whole process;
- `dplbench run --suite smoke` on local Ray (the suite's 3 jobs on this machine's CPUs): wall
  seconds of the whole process, and its fixed overhead two ways: wall minus the jobs' own train and
  eval seconds summed (from the result rows), and wall minus the span during which jobs ran (first
  job start to last job end, from the status table).

The earlier commit runs from a `git worktree` on PYTHONPATH with this environment's packages.

    RAY_AUTH_MODE=disabled .venv/bin/python tools/bench/bench_cli.py [--base c56e4ce] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The console script of each version (`main` where it exists, the Typer app before).
ENTRY = (
    "import sys; sys.argv[0] = 'dplbench'; import dplbench.cli as c; "
    "(getattr(c, 'main', None) or c.app)()"
)


def cli(src: Path, args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(src), "RAY_AUTH_MODE": "disabled"}
    tic = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, env=env, cwd=src
    )
    wall = time.perf_counter() - tic
    if out.returncode != 0:
        raise RuntimeError(f"{src}: dplbench {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return wall, out


def job_seconds(results: Path) -> tuple[float, float | None]:
    """(sum of the jobs' train + eval seconds, span from the first job start to the last end;
    None where the version has no status table)."""
    import duckdb

    rows = f"read_parquet('{results}/rows/**/*.parquet', hive_partitioning=true)"
    own = duckdb.sql(
        f"SELECT sum(t) FROM (SELECT max(train_seconds) + sum(eval_seconds) AS t FROM {rows} "
        "GROUP BY job_id)"
    ).fetchall()[0][0]
    if not list(results.glob("status/**/*.parquet")):
        return float(own), None
    status = f"read_parquet('{results}/status/**/*.parquet', hive_partitioning=true)"
    span = duckdb.sql(f"SELECT epoch(max(ended_at) - min(started_at)) FROM {status}").fetchall()
    return float(own), float(span[0][0])


def smoke(src: Path, data: Path, results: Path) -> dict[str, float]:
    wall, _ = cli(src, ["run", "--suite", "smoke", "--data", str(data), "--results", str(results)])
    own, span = job_seconds(results)
    out = {"smoke wall": wall, "smoke wall - own": wall - own}
    if span is not None:
        out["smoke wall - span"] = wall - span
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="c56e4ce", help="the commit to compare with")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        tmp = Path(tmp)
        old = tmp / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.base],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            versions = {args.base: old, "this": ROOT}
            for name, src in versions.items():  # the synthetic shards, made once, untimed
                smoke(src, tmp / name, tmp / f"warm-{name}")
            runs: dict[str, dict[str, list[float]]] = {n: {} for n in versions}
            for i in range(args.repeats):
                for name, src in versions.items():
                    got = {"--help": cli(src, ["--help"])[0]}
                    got["run --help"] = cli(src, ["run", "--help"])[0]
                    got.update(smoke(src, tmp / name, tmp / f"r{i}-{name}"))
                    for k, v in got.items():
                        runs[name].setdefault(k, []).append(v)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)])
    print(f"median of {args.repeats} runs each, alternating; {os.cpu_count()} CPUs")
    print(f"{'seconds':<22}{args.base:>10}{'this':>10}{'ratio':>8}")
    for key in runs["this"]:
        b = statistics.median(runs["this"][key])
        if key not in runs[args.base]:
            print(f"{key:<22}{'-':>10}{b:>10.2f}{'-':>8}")
            continue
        a = statistics.median(runs[args.base][key])
        print(f"{key:<22}{a:>10.2f}{b:>10.2f}{b / a:>8.2f}")


if __name__ == "__main__":
    main()
