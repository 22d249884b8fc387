"""`dplbench run` without Ray: bad input, nothing half-written, --resume adds exactly the missing rows."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.results import store as results
from dplbench.results.root import ResultsRoot
from dplbench.run.prepare import ensure_synthetic

FAST = ["optim.epochs=2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def _run(*args, env=None):
    return CliRunner().invoke(app, ["run", *args], env=env, catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--suite", "nope"], "unknown suite 'nope'; choose one of:"),
        (["--methods", "dpx"], "unknown method 'dpx'; choose one of: clip_lora, cocoop, coop, dpl"),
        (["--datasets", "cifar"], "unknown dataset 'cifar'; choose one of: caltech101"),
        (["--datasets", "dtd"], "the selection leaves no jobs"),
        (["iwtd.p_mid=0.3"], "unknown config key iwtd.p_mid; valid keys:"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, expect):
    res = tmp_path / "results"
    r = _run("--data", str(tmp_path / "shards"), "--results", str(res), "--no-ray", *args)
    assert r.exit_code == 2
    assert expect in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not res.exists() and not (tmp_path / "shards").exists()


def test_missing_shards_name_the_dataset_and_the_command(tmp_path):
    res = tmp_path / "results"
    r = _run(
        "--suite",
        "base2novel",
        "--datasets",
        "dtd",
        "--seeds",
        "1",
        "--data",
        str(tmp_path / "shards"),
        "--results",
        str(res),
        "--no-ray",
    )
    assert r.exit_code == 2
    assert "no shards for dtd" in r.stderr
    assert "dplbench data convert --root $DATA --datasets dtd" in r.stderr
    assert not res.exists()


def test_resume_adds_exactly_the_missing_rows(tmp_path, shards, monkeypatch):
    res = str(tmp_path / "results")
    common = ["--data", str(shards), "--results", res, "--no-ray", "--loader-workers", "0", *FAST]
    dry = _run("--dry-run", *common)
    assert dry.exit_code == 0 and "3 jobs; nothing was run" in dry.stdout
    from dplbench.plan.config import parse_overrides
    from dplbench.plan.suites import load_suite

    jobs = load_suite("smoke", {"overrides": parse_overrides(FAST)}).jobs
    dpl = next(j for j in jobs if j.method == "dpl")
    # The interruption: dpl dies at the start of its second epoch, after one checkpoint.
    first = _run(*common, env={"DPLBENCH_FAIL_JOB": f"{dpl.id}@1"})
    assert first.exit_code == 1
    assert f"failed {dpl.id}" in first.stderr
    # one line: the root cause and where the full traceback went
    line = next(ln for ln in first.stderr.splitlines() if dpl.id in ln)
    assert "RuntimeError: job" in line and "failure injected at epoch 1" in line
    log_file = line.rsplit("(log: ", 1)[1].rstrip(")")
    assert "Traceback (most recent call last)" in open(log_file).read()
    status = results.query(
        ResultsRoot(res), "SELECT job_id, status, error, log FROM status"
    ).to_pylist()
    by_job = {r["job_id"]: r for r in status}
    assert by_job[dpl.id]["status"] == "failed" and by_job[dpl.id]["log"] == log_file
    assert {r["status"] for r in status if r["job_id"] != dpl.id} == {"done"}
    ids = lambda: results.query(ResultsRoot(res), "SELECT job_id, run_id FROM rows").to_pylist()  # noqa: E731
    before = ids()
    assert {r["job_id"] for r in before} == {j.id for j in jobs} - {dpl.id}
    assert len(before) == 4  # zsclip and coop: base + novel each

    # --resume's dry run says which jobs run and whose rows it keeps (and from which run)
    plan = _run("--resume", "--dry-run", "--format", "json", *common)
    views = {v["job_id"]: v for v in map(json.loads, plan.stdout.splitlines())}
    kept_runs = {r["job_id"]: r["run_id"] for r in before}
    assert {j: (v["resume"], v["rows_from_run"]) for j, v in views.items()} == {
        j.id: ("run", None) if j.id == dpl.id else ("skip", kept_runs[j.id]) for j in jobs
    }

    again = _run("--resume", *common)
    assert again.exit_code == 0, again.stderr
    assert (
        "--resume: 2 jobs already had results; ran 1 failed, 0 stopped and 0 missing again"
        in again.stdout
    )
    # the kept jobs show as done by their earlier run, not as queued
    for job_id, run_id in kept_runs.items():
        line = next(ln for ln in again.stdout.splitlines() if job_id[:10] in ln)
        assert "done" in line and f"earlier run {run_id}" in line
    after = ids()
    assert len(after) == 6
    assert sorted(map(str, before)) == sorted(map(str, [r for r in after if r["job_id"] != dpl.id]))
    assert {r["job_id"] for r in after if r not in before} == {dpl.id}
    # The resumed run trained only the missing epoch, from the first run's checkpoint; the
    # failed run's epoch is on record, marked failed: every epoch once.
    epochs = results.query(
        ResultsRoot(res),
        f"SELECT epoch, run_status FROM epochs WHERE job_id = '{dpl.id}' ORDER BY epoch",
    ).to_pylist()
    assert [(e["epoch"], e["run_status"]) for e in epochs] == [(0, "failed"), (1, "done")]
    assert (
        results.query(ResultsRoot(res), "SELECT status FROM status").column("status").to_pylist()
        == ["done"] * 3
    )
    # Nothing left: one line, exit 0, no Ray (not even without --no-ray), no status file.
    import ray

    def no_ray(*a, **k):
        raise AssertionError("--resume with nothing to do started Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    statuses = sorted(p.name for p in (tmp_path / "results" / "status").rglob("*.parquet"))
    done = _run("--resume", *[a for a in common if a != "--no-ray"])
    assert done.exit_code == 0, done.stderr
    runs = ", ".join(sorted({r["run_id"] for r in ids()}))  # the first run's and the resumed
    assert done.stdout.strip().splitlines() == [
        f"--resume: all 3 jobs already have results (runs {runs}); nothing to run"
    ]
    assert sorted(p.name for p in (tmp_path / "results" / "status").rglob("*.parquet")) == statuses
    rows = results.query(
        ResultsRoot(res), f"SELECT * FROM results WHERE job_id = '{dpl.id}'"
    ).to_pylist()
    assert {r["subsample"] for r in rows} == {"base", "novel"}
    for r in rows:  # provenance on every row
        assert r["code_version"] and r["versions"] and r["hardware"] and r["config"]
        assert r["total"] == 30 and r["correct"] <= r["total"]
        assert r["accuracy"] == pytest.approx(100 * r["correct"] / r["total"])


def test_cli_runs_as_a_real_subprocess(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dplbench.cli",
            "run",
            "--suite",
            "all15",
            "--seeds",
            "1",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "jobs; nothing was run" in out.stdout


def test_results_commands_are_all_there():
    out = CliRunner().invoke(app, ["results", "--help"])
    assert all(cmd in out.output for cmd in ("ls", "query", "show"))


class _RunsCode:
    """What a pickle in a shared results root could hold: loading it would create `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_is_not_a_weights_file_of_the_job_is_one_line_with_the_fix(
    tmp_path, shards
):
    import torch

    from dplbench.plan.suites import load_suite

    res = tmp_path / "results"
    common = ["--data", str(shards), "--results", str(res), "--no-ray", "--loader-workers", "0",
              "--methods", "coop,dpl", "--seeds", "1", *FAST]  # fmt: skip
    coop, dpl = sorted(load_suite("smoke", {"methods": ["coop", "dpl"], "seeds": [1],
                                            "overrides": {"optim": {"epochs": 2}}}).jobs,
                       key=lambda j: j.method)  # fmt: skip
    first = _run(*common, env={"DPLBENCH_FAIL_JOB": f"{coop.id}@1,{dpl.id}@1"})
    assert first.exit_code == 1, first.output
    (ckpt,) = (res / "checkpoints" / coop.id).rglob("epoch_*.pt")
    good = ckpt.read_bytes()
    (other,) = (res / "checkpoints" / dpl.id).rglob("epoch_*.pt")
    others = other.read_bytes()  # gone once dpl's resumed run ends
    marker = tmp_path / "pwned"
    cases = {
        "unsafe": (lambda: torch.save({"model": _RunsCode(marker)}, ckpt),
                   "not a weights-only state file (it holds Python objects, which dplbench "
                   "never loads)"),
        "truncated": (lambda: ckpt.write_bytes(good[: len(good) // 2]),
                      "unreadable, truncated or not a state file"),
        "another job's": (lambda: ckpt.write_bytes(others),
                          f"the state of job {dpl.id}, not of job {coop.id}"),
    }  # fmt: skip
    fix = f"; delete it (rm {ckpt}) and rerun: job {coop.id} retrains from scratch"
    for name, (spoil, what) in cases.items():
        spoil()
        again = _run("--resume", *common)
        assert again.exit_code == 1, (name, again.output)
        (line,) = [ln for ln in again.stderr.splitlines() if coop.id in ln]
        assert f"{ckpt}: {what}" in line and fix in line, (name, line)
        assert "weights_only" not in again.output, name  # never advice to load it unsafely
        assert not marker.exists()
    ckpt.unlink()  # the fix, as the line says
    fixed = _run("--resume", *common)
    assert fixed.exit_code == 0, fixed.output
