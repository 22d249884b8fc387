"""run, tune and ablate launch their units through one Ray function (run/launcher.launch)."""

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.plan.suites import load_suite
from dplbench.run import launcher
from dplbench.run.events import JobEnded
from dplbench.run.prepare import ensure_synthetic


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def test_run_tune_and_ablate_all_go_through_launch(tmp_path, shards, monkeypatch):
    calls = []

    def fake_launch(units, settings, opts, sink, scheduler=None, sweep=None, trainable=None):
        calls.append([(u.kind, u.key, [j.id for j in u.jobs]) for u in units])
        for u in units:
            for j in u.jobs:
                sink(JobEnded(j.id, "done"))

    monkeypatch.setattr(launcher, "launch", fake_launch)
    common = ["--data", str(shards), "--results", str(tmp_path / "r"), "--seeds", "1"]
    cli = CliRunner()

    ran = cli.invoke(app, ["run", "--suite", "smoke", "--methods", "coop", *common])
    assert ran.exit_code == 0, ran.output
    (coop,) = load_suite("smoke", {"methods": ["coop"], "seeds": [1]}).jobs
    assert calls[-1] == [("job", coop.id, [coop.id])]

    tuned = cli.invoke(app, ["tune", "--param", "lr", "--values", "0.1,0.2", *common])
    assert tuned.exit_code == 0, tuned.output
    units = calls[-1]
    assert [kind for kind, _, _ in units] == ["setting", "setting"]
    assert all(len(jobs) == 1 for _, _, jobs in units)  # one seed, one dataset: one job each

    ablated = cli.invoke(app, ["ablate", "mag", "--suite", "smoke", *common])
    assert ablated.exit_code == 0, ablated.output
    assert [kind for kind, _, _ in calls[-1]] == ["job", "job"]  # the two variants
    assert len(calls) == 3
