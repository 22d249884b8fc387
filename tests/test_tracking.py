"""--track: per-epoch metrics and final scores in a local MLflow file store and in TensorBoard
event files, read back."""

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.plan.config import parse_overrides
from dplbench.plan.suites import load_suite
from dplbench.run.prepare import ensure_synthetic

mlflow = pytest.importorskip("mlflow")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def _run(shards, res, *extra):
    args = ["run", "--suite", "smoke", "--methods", "coop", "--data", str(shards), "--no-ray"]
    args += ["--results", str(res), "--loader-workers", "0", "optim.epochs=2", *extra]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    return out


def test_mlflow_file_store_gets_epochs_and_final_scores(tmp_path, shards):
    res = tmp_path / "r"
    out = _run(shards, res, "--track", "mlflow")
    assert "tracked in mlflow" in out.stdout
    (job,) = load_suite(
        "smoke", {"methods": ["coop"], "overrides": parse_overrides(["optim.epochs=2"])}
    ).jobs
    client = mlflow.MlflowClient((res / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("smoke")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["job_id"] == job.id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1]
    assert {"accuracy_base", "accuracy_novel", "lr"} <= set(run.data.metrics)


def test_tensorboard_event_files_get_epochs_and_final_scores(tmp_path, shards):
    res = tmp_path / "r"
    _run(shards, res, "--track", "tensorboard")
    (folder,) = (res / "tensorboard" / "smoke").iterdir()
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "accuracy_base", "accuracy_novel"} <= tags
    assert [e.step for e in acc.Scalars("loss")] == [0, 1]


def test_unknown_tracker_is_one_line():
    out = CliRunner().invoke(app, ["run", "--suite", "smoke", "--no-ray", "--track", "wandb"])
    assert out.exit_code == 2 and "--track 'wandb': choose one of mlflow, tensorboard" in out.stderr
