"""Jobs on Ray: the smoke suite end to end through the CLI, DDP evaluation, a 2-node cluster."""

import dataclasses

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.plan.config import parse_overrides
from dplbench.plan.plan import Plan
from dplbench.plan.suites import load_suite
from dplbench.results import store as results
from dplbench.results.root import ResultsRoot
from dplbench.run.context import LocalContext
from dplbench.run.driver import run_plan
from dplbench.run.prepare import ensure_selections, ensure_synthetic
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.worker import run_job

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


@pytest.fixture
def local_ray():
    ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def test_smoke_suite_end_to_end_through_the_cli(tmp_path, shards, local_ray):
    res = tmp_path / "results"
    r = CliRunner().invoke(
        app,
        [
            "run",
            "--suite",
            "smoke",
            "--data",
            str(shards),
            "--results",
            str(res),
            "--loader-workers",
            "0",
            "optim.epochs=2",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.stderr
    rows = results.query(
        ResultsRoot(res),
        "SELECT method, subsample, total, epochs, suite, node FROM results ORDER BY ALL",
    ).to_pylist()
    assert [(x["method"], x["subsample"]) for x in rows] == [
        (m, s) for m in ("coop", "dpl", "zsclip") for s in ("base", "novel")
    ]
    assert all(x["total"] == 30 and x["suite"] == "smoke" and x["node"] for x in rows)
    assert {x["epochs"] for x in rows} == {0, 2}
    epochs = results.query(ResultsRoot(res), "SELECT job_id, epoch FROM epochs").to_pylist()
    assert len(epochs) == 4  # coop and dpl, 2 epochs each
    # Each job ran as a plain Tune trial and kept its newest checkpoint (trainable state only)
    # in the results root.
    ckpts = sorted((res / "checkpoints").glob("*/*/epoch_*.pt"))
    assert [c.name for c in ckpts] == ["epoch_001.pt", "epoch_001.pt"]
    import torch

    for ckpt in ckpts:
        state = torch.load(ckpt, weights_only=True)
        assert state["epoch"] == 1 and not any(k.startswith("clip.") for k in state["model"])
    rep = CliRunner().invoke(app, ["report", "--suite", "smoke", "--results", str(res)])
    assert rep.exit_code == 0
    md = (res / "reports" / "smoke" / "report.md").read_text()
    assert "| synthetic | dpl |" in md
    # rendered for the terminal: no Markdown syntax, the same cells
    assert "| synthetic | dpl |" not in rep.stdout and "Base-to-novel generalisation" in rep.stdout


def test_two_ddp_workers_evaluate_like_one(tmp_path, shards, local_ray):
    over = parse_overrides(["optim.epochs=1"])
    (train_job,) = load_suite("smoke", {"methods": ["coop"], "overrides": over}).jobs
    settings = RunSettings.local(
        str(shards), str(tmp_path / "r"), loader_workers=0, eval_batch_size=7
    )
    ensure_selections([train_job], str(shards))
    run_job(train_job, settings, LocalContext(settings.root, train_job.id, "x"))
    evals = [dataclasses.replace(train_job, source=train_job.id, workers=w) for w in (1, 2)]
    outcomes = run_plan(Plan("adhoc", tuple(evals)), settings, ExecOptions.local(cpus=2)).outcomes
    assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    rows = results.query(
        settings.root,
        "SELECT job_id, num_workers, subsample, correct, total FROM results "
        f"WHERE job_id IN ('{evals[0].id}', '{evals[1].id}') ORDER BY subsample, num_workers",
    ).to_pylist()
    assert [r["num_workers"] for r in rows] == [1, 2, 1, 2]
    for one, two in (rows[0:2], rows[2:4]):
        assert (one["correct"], one["total"]) == (two["correct"], two["total"])
        assert one["total"] == 30
    # The per-sample outcomes too (#29): two ranks' shares gathered are the one rank's pass.
    per_sample = {
        job.id: results.query(
            settings.root,
            "SELECT subsample, key, label, pred FROM outcomes WHERE job_id = $job ORDER BY ALL",
            {"job": job.id},
        ).to_pylist()
        for job in evals
    }
    assert len(per_sample[evals[0].id]) == 60 and per_sample[evals[0].id] == per_sample[evals[1].id]


def test_jobs_spread_over_a_two_node_cluster(tmp_path, shards):
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        # Jobs long enough (a few seconds) that the second node's trial actor is up before the
        # first node's finishes: reused actors would otherwise take every job on one node.
        over = parse_overrides(["optim.epochs=12"])
        jobs = load_suite(
            "smoke", {"methods": ["coop"], "seeds": [1, 2, 3, 4], "overrides": over}
        ).jobs
        settings = RunSettings.local(str(shards), str(tmp_path / "r"), loader_workers=0)
        ensure_selections(list(jobs), str(shards))
        opts = ExecOptions.local(cpus=2, address=cluster.address)
        outcomes = run_plan(Plan("adhoc", tuple(jobs)), settings, opts).outcomes
        assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes]
        nodes = results.query(settings.root, "SELECT DISTINCT node FROM results").to_pylist()
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert {n["node"] for n in nodes} == alive and len(alive) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
