"""run, tune and ablate launch their jobs through one Ray function (run/launcher.launch)."""

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.plan.suites import load_suite
from dplbench.run import launcher
from dplbench.run.launcher import TrialEnd
from dplbench.run.prepare import ensure_synthetic


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def test_run_tune_and_ablate_all_go_through_launch(tmp_path, shards, monkeypatch):
    calls = []

    def fake_launch(
        trainable, trials, settings, opts, on_event=None, scheduler=None, plain=False, sweep=None
    ):
        calls.append((trainable.__name__, {k: [j.id for j in js] for k, js in trials.items()}))
        return [TrialEnd(k, "done") for k in trials]

    monkeypatch.setattr(launcher, "launch", fake_launch)
    common = ["--data", str(shards), "--results", str(tmp_path / "r"), "--seeds", "1"]
    cli = CliRunner()

    ran = cli.invoke(app, ["run", "--suite", "smoke", "--methods", "coop", *common])
    assert ran.exit_code == 0, ran.output
    (coop,) = load_suite("smoke", {"methods": ["coop"], "seeds": [1]}).jobs
    assert calls[-1] == ("job_trial", {coop.id: [coop.id]})

    tuned = cli.invoke(app, ["tune", "--param", "lr", "--values", "0.1,0.2", *common])
    assert tuned.exit_code == 0, tuned.output
    name, trials = calls[-1]
    assert name == "sweep_trial" and len(trials) == 2
    assert all(len(jobs) == 1 for jobs in trials.values())  # one seed, one dataset: one job each

    ablated = cli.invoke(app, ["ablate", "mag", "--suite", "smoke", *common])
    assert ablated.exit_code == 0, ablated.output
    name, trials = calls[-1]
    assert name == "job_trial" and len(trials) == 2  # the two variants, one job each
    assert [c[0] for c in calls] == ["job_trial", "sweep_trial", "job_trial"]
