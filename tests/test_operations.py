"""Operating a suite on Ray: failures as one line with a log, every epoch once across a worker
restart, corrupt data raised or skipped and counted, the status table."""

import shutil

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.data.tario import iter_samples, write_tar
from dplbench.plan.config import parse_overrides
from dplbench.plan.suites import load_suite
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.driver import run_plan
from dplbench.run.prepare import ensure_selections, ensure_synthetic
from dplbench.run.settings import ExecOptions, RunSettings

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


@pytest.fixture(scope="module")
def local_ray():
    ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def test_worker_killed_mid_job_is_restarted_and_every_epoch_recorded_once(
    tmp_path, shards, local_ray
):
    over = parse_overrides(["optim.epochs=3"])
    suite = load_suite("smoke", {"methods": ["coop"], "seeds": [1], "overrides": over})
    (job,) = suite.jobs
    settings = RunSettings.local(
        str(shards),
        str(tmp_path / "r"),
        loader_workers=0,
        fail_job=f"{job.id}@2:kill",  # SIGKILL the worker at the start of epoch 2, once
    )
    ensure_selections([job], str(shards))
    summary = run_plan(suite, settings, ExecOptions.local(cpus=2))
    assert not summary.failed, [o.error for o in summary.failed]
    epochs = store.query(
        settings.root, "SELECT epoch, run_status FROM epochs ORDER BY epoch"
    ).to_pylist()
    assert epochs == [{"epoch": e, "run_status": "done"} for e in range(3)]
    rows = store.query(settings.root, "SELECT subsample, total FROM rows").to_pylist()
    assert sorted(r["subsample"] for r in rows) == ["base", "novel"]
    (status,) = store.query(settings.root, "SELECT * FROM status").to_pylist()
    assert status["status"] == "done" and status["attempts"] == 2 and status["node"]


def _corrupt_one_test_image(root):
    shard = root / "synthetic" / "test" / "0.tar"
    samples = list(iter_samples(str(shard)))
    samples[0]["jpg"] = b"\xff\xd8\xff not a jpeg"
    write_tar(shard, samples)
    return shard, samples[0]["__key__"]


def test_corrupt_shard_fails_as_one_line_with_a_log_or_is_skipped_and_counted(
    tmp_path, shards, local_ray
):
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    shard, key = _corrupt_one_test_image(data)
    res = tmp_path / "r"
    # the default loader workers: the error is raised in a DataLoader worker process
    args = ["run", "--suite", "smoke", "--methods", "zsclip", "--data", str(data)]
    args += ["--results", str(res)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1
    failed = [ln for ln in out.stderr.splitlines() if ln.startswith("failed ")]
    assert len(failed) == 1 and "Traceback" not in out.stderr and "RayTaskError" not in out.stderr
    assert f"CorruptShardError: corrupt shard {shard}: sample '{key}'" in failed[0]
    log_file = failed[0].rsplit("(log: ", 1)[1].rstrip(")")
    assert "Traceback (most recent call last)" in open(log_file).read()
    (status,) = store.query(ResultsRoot(res), "SELECT status, error, log FROM status").to_pylist()
    assert status["status"] == "failed" and status["log"] == log_file
    assert status["error"].startswith(f"CorruptShardError: corrupt shard {shard}: sample '{key}'")
    listed = CliRunner().invoke(app, ["results", "ls", "--results", str(res)])
    assert "CorruptShardError" in listed.stdout and "DataLoader" not in listed.stdout

    skip = CliRunner().invoke(app, [*args, "--on-data-error", "skip"])
    assert skip.exit_code == 0, skip.output
    rows = store.query(
        ResultsRoot(res), "SELECT subsample, skipped, total FROM results"
    ).to_pylist()
    assert sum(r["skipped"] for r in rows) == 1  # the one image, in whichever subsample has it
    assert sum(r["total"] for r in rows) == 59  # 60 test images, one left out
    report = CliRunner().invoke(app, ["report", "--suite", "smoke", "--results", str(res)])
    assert report.exit_code == 0 and "Partial splits" in report.stdout
