"""Many drivers, one results root: nothing lost or duplicated, and a job that another driver is
running is skipped or waited for (per-job leases)."""

import os
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.plan.suites import load_suite
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.leases import Leases
from dplbench.run.prepare import ensure_synthetic


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def test_a_live_lease_blocks_a_stale_one_is_taken_over(tmp_path):
    a, b = Leases(ResultsRoot(tmp_path), "run-a"), Leases(ResultsRoot(tmp_path), "run-b")
    assert a.acquire("job1") is None
    held = b.acquire("job1")
    assert held is not None and held.owner == a.owner and str(os.getpid()) in held.describe()
    a.release("job1")
    assert b.acquire("job1") is None  # free again
    b.release_all()
    # stale by age: renewals stopped longer than the timeout
    assert a.acquire("job2") is None
    old = time.time() - 10_000
    os.utime(tmp_path / "leases" / "job2.json", (old, old))
    assert b.acquire("job2") is None and b.holder("job2").owner == b.owner
    # stale by owner: a dead process on this host
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "leases" / "job3.json"
    path.write_text(f'{{"owner": "x", "host": "{a.host}", "pid": {dead.pid}, "since": 0}}')
    assert b.acquire("job3") is None
    a.release_all()
    b.release_all()
    assert not list((tmp_path / "leases").glob("*.json"))


def _cli(*args):
    return [sys.executable, "-m", "dplbench.cli", "run", *args]


def test_two_drivers_at_once_lose_and_duplicate_nothing(tmp_path, shards):
    res = tmp_path / "results"
    common = ["--suite", "smoke", "--methods", "zsclip,coop", "--data", str(shards)]
    common += ["--results", str(res), "--no-ray", "--loader-workers", "0", "optim.epochs=1"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    procs = [
        subprocess.Popen(_cli(*common, "--seeds", seed), env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for seed in ("1", "2")
    ]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    rows = store.query(
        ResultsRoot(res), "SELECT job_id, run_id, seed, subsample FROM rows"
    ).to_pylist()
    assert len(rows) == 2 * 2 * 2  # seeds x methods x (base, novel)
    assert len({(r["job_id"], r["subsample"]) for r in rows}) == 8
    assert len({r["run_id"] for r in rows}) == 2
    status = store.query(ResultsRoot(res), "SELECT job_id, status FROM status").to_pylist()
    assert len(status) == 4 and {s["status"] for s in status} == {"done"}


def test_a_job_another_driver_holds_is_skipped_or_waited_for(tmp_path, shards):
    res = tmp_path / "results"
    (job,) = load_suite("smoke", {"methods": ["zsclip"], "seeds": [1]}).jobs
    other = Leases(ResultsRoot(res), "another-driver")
    assert other.acquire(job.id) is None  # a live driver (this process) holds the job
    args = ["run", "--suite", "smoke", "--methods", "zsclip", "--seeds", "1"]
    args += ["--data", str(shards), "--results", str(res), "--no-ray", "--loader-workers", "0"]
    skipped = CliRunner().invoke(app, args)
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1 jobs another driver is running" in skipped.stdout
    assert not store.has_rows(ResultsRoot(res))
    (status,) = store.query(ResultsRoot(res), "SELECT status, error FROM status").to_pylist()
    assert status["status"] == "stopped" and "another driver" in status["error"]

    threading.Timer(1.5, other.release_all).start()  # the other driver finishes
    waited = CliRunner().invoke(app, [*args, "--on-lease", "wait"])
    assert waited.exit_code == 0, waited.output
    assert store.query(ResultsRoot(res), "SELECT count(*) AS n FROM rows").to_pylist() == [{"n": 2}]
    assert not list((res / "leases").glob("*.json"))  # released when the job ended
