"""Selection honesty: last-epoch against best-epoch-on-test scores, by hand and end to end."""

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.results.selection import selection_gap
from dplbench.run.prepare import ensure_synthetic


def test_gap_by_hand():
    results = [
        {"job_id": "a", "method": "dpl", "train_dataset": "dtd"},
        {"job_id": "b", "method": "dpl", "train_dataset": "dtd"},
        {"job_id": "c", "method": "dpl", "train_dataset": "eurosat"},
    ]
    epochs = [
        # job a: HM 48 then 60 then 50 (last 50, best 60)
        {"job_id": "a", "epoch": 0, "test_base": 60.0, "test_novel": 40.0},
        {"job_id": "a", "epoch": 1, "test_base": 60.0, "test_novel": 60.0},
        {"job_id": "a", "epoch": 2, "test_base": 50.0, "test_novel": 50.0},
        # job b: last is best, 40
        {"job_id": "b", "epoch": 0, "test_base": 30.0, "test_novel": 30.0},
        {"job_id": "b", "epoch": 1, "test_base": 40.0, "test_novel": 40.0},
        # job c: 20 then 30
        {"job_id": "c", "epoch": 0, "test_base": 20.0, "test_novel": 20.0},
        {"job_id": "c", "epoch": 1, "test_base": 30.0, "test_novel": 30.0},
        {"job_id": "z", "epoch": 0, "test_base": 99.0, "test_novel": 99.0},  # not in results
    ]
    dtd, eurosat, average = selection_gap(epochs, results)
    assert (dtd["last"], dtd["best"], dtd["gap"], dtd["seeds"]) == (45.0, 50.0, 5.0, 2)
    assert (eurosat["last"], eurosat["gap"]) == (30.0, 0.0)
    assert average["dataset"] == "average" and average["gap"] == pytest.approx(2.5)
    assert dtd["metric"] == "HM"


def test_eval_every_epoch_records_test_scores_and_the_report_shows_the_gap(tmp_path):
    shards = tmp_path / "shards"
    ensure_synthetic(str(shards))
    res = tmp_path / "r"
    args = ["run", "--suite", "smoke", "--methods", "coop", "--data", str(shards), "--no-ray"]
    args += ["--results", str(res), "--loader-workers", "0", "optim.epochs=3"]
    out = CliRunner().invoke(app, [*args, "--eval-every-epoch"])
    assert out.exit_code == 0, out.output
    epochs = store.query(
        ResultsRoot(res), "SELECT epoch, test_base, test_novel FROM epochs"
    ).to_pylist()
    assert len(epochs) == 3 and all(0 <= e["test_base"] <= 100 for e in epochs)
    # the last epoch's test scores are what the job's result rows report
    rows = {r["subsample"]: r["accuracy"] for r in store.latest_rows(ResultsRoot(res)).to_pylist()}
    last = max(epochs, key=lambda e: e["epoch"])
    assert (last["test_base"], last["test_novel"]) == (rows["base"], rows["novel"])
    report = CliRunner().invoke(app, ["report", "--results", str(res)])
    assert report.exit_code == 0 and "Selection gap" in report.stdout


def test_eval_every_epoch_is_a_run_setting_that_leaves_the_training_alone(tmp_path):
    """Same job id, and a trained state equal bit for bit, with and without per-epoch test
    scores: evaluating between epochs draws from no training RNG stream (a DataLoader iterator
    takes its base seed from the global generator; dpl's IWTD draws from it too)."""
    import torch

    from dplbench.plan.suites import load_suite
    from dplbench.results.root import ResultsRoot

    shards = tmp_path / "shards"
    ensure_synthetic(str(shards))
    (job,) = load_suite("smoke", {"methods": ["dpl"], "overrides": {"optim": {"epochs": 2}}}).jobs
    states = []
    for flag in ([], ["--eval-every-epoch"]):
        res = tmp_path / f"r{len(flag)}"
        args = ["run", "--methods", "dpl", "--data", str(shards), "--no-ray", "--results", str(res)]
        out = CliRunner().invoke(app, [*args, "--loader-workers", "0", "optim.epochs=2", *flag])
        assert out.exit_code == 0, out.output
        assert store.query(ResultsRoot(res), "SELECT DISTINCT job_id FROM rows").column(
            0
        ).to_pylist() == [job.id]
        states.append(torch.load(ResultsRoot(res).final_state(job.id), weights_only=True))
    plain, scored = states
    assert plain.keys() == scored.keys()
    assert all(torch.equal(plain[k], scored[k]) for k in plain)
