"""Ctrl-C keeps everything: a real SIGINT to the process group of `dplbench run` while it trains
(in this process with --no-ray, and through Ray Tune) stops it with exit code 130, jobs that
trained are `stopped` and the rest `not started` (no log for a job that never ran), the last line
gives the counts and the command that resumes; that command finishes the run, and then every job
has each of its epochs exactly once and the same results a clean run has. A second Ctrl-C ends at
once with nothing half-written."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.prepare import ensure_synthetic

EPOCHS = 12
DPLBENCH = str(Path(sys.executable).parent / "dplbench")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def _args(shards, results, mode):
    return ["run", "--suite", "smoke", "--methods", "coop,dpl", "--seeds", "1,2",
            "--loader-workers", "0", "--data", str(shards), "--results", str(results),
            *mode, f"optim.epochs={EPOCHS}"]  # fmt: skip


def _start(args, cwd):
    return subprocess.Popen([DPLBENCH, *args], cwd=cwd, env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _interrupt_while_training(proc, results, times=1):
    """SIGINT to the process group (as a terminal's Ctrl-C) once a job has checkpointed its
    second epoch; `times` signals, 0.2 s apart."""
    deadline = time.monotonic() + 300
    while not list(Path(results, "checkpoints").glob("*/*/epoch_001.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no epoch was checkpointed"
        time.sleep(0.05)
    for _ in range(times):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _rows(results):
    return sorted(
        (r["job_id"], r["subsample"], r["correct"], r["total"])
        for r in store.query(ResultsRoot(results), "SELECT * FROM results").to_pylist()
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--no-ray"], pytest.param([], marks=pytest.mark.cluster)])
def test_ctrl_c_keeps_every_epoch_and_resume_finishes_as_a_clean_run(tmp_path, shards, mode):
    results = tmp_path / "results"
    args = _args(shards, results, mode)
    code, out, err = _interrupt_while_training(_start(args, tmp_path), results)
    assert code == 130, out + err
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"interrupted \(SIGINT\): (\d+) done, (\d+) stopped, (\d+) not started; "
                     r"resume with: (.*)", last)  # fmt: skip
    assert m, last
    done, stopped, not_started = map(int, m.groups()[:3])
    assert stopped >= 1 and not_started >= 1 and done + stopped + not_started == 4
    resume = shlex.split(m.group(4))
    assert resume == ["dplbench", *args, "--resume"]
    status = store.query(ResultsRoot(results), "SELECT * FROM status").to_pylist()
    assert sorted(r["status"] for r in status) == sorted(
        ["done"] * done + ["stopped"] * stopped + ["not started"] * not_started
    )
    assert all(r["log"] is None for r in status)  # nothing failed: no log to read
    logs = [p.name for p in (results / "logs").glob("*.log") if not p.name.startswith("ray-")]
    assert logs == []
    assert "Tuner.restore" not in out + err

    again = subprocess.run([DPLBENCH, *resume[1:]], cwd=tmp_path, env=ENV, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    epochs = store.query(ResultsRoot(results), "SELECT job_id, epoch FROM epochs").to_pylist()
    by_job = {}
    for e in epochs:
        by_job.setdefault(e["job_id"], []).append(e["epoch"])
    assert len(by_job) == 4
    for job_id, seen in by_job.items():
        assert sorted(seen) == list(range(EPOCHS)), job_id  # each epoch once, none lost

    clean = tmp_path / "clean"
    ran = subprocess.run([DPLBENCH, *_args(shards, clean, ["--no-ray"])], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert _rows(results) == _rows(clean)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_second_ctrl_c_ends_at_once_with_nothing_half_written(tmp_path, shards):
    results = tmp_path / "results"
    args = _args(shards, results, [])
    code, out, err = _interrupt_while_training(_start(args, tmp_path), results, times=2)
    assert code == 130, out + err
    assert f"interrupted again: stopped at once; resume with: dplbench {shlex.join(args)} " \
        "--resume" in err.replace("\n", "")  # fmt: skip
    assert not [p for p in results.rglob("*") if p.name.endswith(".tmp")]
    root = ResultsRoot(results)
    for table in ("rows", "epochs", "status"):  # every file there reads whole
        if store.has_rows(root, table):
            assert store.query(root, f"SELECT count(*) AS n FROM {table}").to_pylist()[0]["n"] > 0
