"""dplbench tune: named parameters, spaces, objective, records; a real ASHA sweep on smoke data."""

import logging
import os
import threading
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dplbench.cli import ablate, tune
from dplbench.plan import sweeps
from dplbench.plan.config import parse_overrides
from dplbench.plan.units import plan_units
from dplbench.request import Selection
from dplbench.results import sweeps as records
from dplbench.results.aggregate import harmonic_mean
from dplbench.results.root import ResultsRoot
from dplbench.run.driver import run_plan
from dplbench.run.finish import sweep_outputs
from dplbench.run.resume import skipped_ids
from dplbench.run.settings import ExecOptions, RunSettings


def _app() -> typer.Typer:
    app = typer.Typer()
    tune.register(app)
    ablate.register(app)  # two commands: Typer keeps the command names
    return app


def test_named_params_map_to_config_keys():
    setting = {"entropy_weight": 0.1, "importance": "cls+self", "n_ctx": 8, "fixed_lambda": True}
    over = sweeps.overrides_of(setting)
    assert over["rer"] == {"weight": 0.1, "fixed_lambda": True}
    assert over["iwtd"] == {"importance": ["cls", "self"]}
    assert over["prompts"] == {"n_ctx_text": 8, "n_ctx_vision": 8}
    assert sweeps.best_overrides(setting) == [
        "rer.weight=0.1",
        "iwtd.importance=[cls,self]",
        "prompts.n_ctx_text=8",
        "prompts.n_ctx_vision=8",
        "rer.fixed_lambda=true",
    ]
    assert sweeps.param("importance").value(["cls", "cross"]) == "cls+cross"
    assert sweeps.param("iwtd.sigma").keys == ("iwtd.sigma",)  # raw dotted keys are accepted


def test_unknown_parameter_is_one_line_and_exit_2():
    out = CliRunner().invoke(_app(), ["tune", "--param", "bogus", "--dry-run"])
    assert out.exit_code == 2
    assert "unknown parameter 'bogus'" in out.output and "entropy_weight" in out.output
    assert "Traceback" not in out.output
    bad = CliRunner().invoke(_app(), ["tune", "--param", "p_max=high", "--dry-run"])
    assert bad.exit_code == 2 and "expected float" in bad.output


def test_space_grid_crossed_with_seeded_draws():
    space = {"importance": ["cls", "uniform"], "p_max": {"uniform": [0.3, 0.7]}}
    a, b = sweeps.expand(space, num_samples=3), sweeps.expand(space, num_samples=3)
    assert a == b and len(a) == 6  # same draws every time: --resume finds its trials
    assert {s["importance"] for s in a} == {"cls", "uniform"}
    assert all(0.3 <= s["p_max"] <= 0.7 for s in a)
    assert len(sweeps.expand({"lr": [0.1, 0.1, 0.2]})) == 2  # duplicates dropped
    for name in ("entropy_weight", "iwtd", "rer", "prompts"):
        spec = sweeps.load_space(name)
        assert sweeps.expand(spec.params, spec.num_samples)


def test_trials_resolve_jobs_with_params_and_dry_run_lists_them():
    sel = Selection(methods=("dpl",), seeds=(1, 2), overrides=parse_overrides(["optim.epochs=2"]))
    plan = sweeps.make_sweep(sweeps.expand({"entropy_weight": [0.0, 0.1]}), "smoke", sel)
    sweep = plan.sweep
    assert len(sweep.trials) == 2 and all(len(t.jobs) == 2 for t in sweep.trials)  # 2 seeds
    job = sweep.trials[1].jobs[0]
    assert job.config.rer.weight == 0.1 and job.params["entropy_weight"] == 0.1
    assert job.params["sweep"] == sweep.name == plan.name and {j.epochs for j in plan.jobs} == {2}
    out = CliRunner().invoke(_app(), ["tune", "--param", "entropy_weight", "--dry-run"])
    assert out.exit_code == 0 and "5 trials" in out.output  # the parameter's default grid


def test_objective_is_hm_over_datasets_and_test_metrics_hm_of_averages():
    assert harmonic_mean([50.0, 100.0]) == pytest.approx(200 / 3)
    rows = [
        {"dataset": "a", "subsample": "base", "accuracy": 80.0},
        {"dataset": "a", "subsample": "novel", "accuracy": 60.0},
        {"dataset": "b", "subsample": "base", "accuracy": 60.0},
        {"dataset": "b", "subsample": "novel", "accuracy": 40.0},
    ]
    m = records.trial_test_metrics(rows)
    assert m["test_base"] == 70.0 and m["test_novel"] == 50.0
    assert m["test_hm"] == pytest.approx(2 * 70 * 50 / 120)


def test_resume_keeps_done_and_stopped_trials(tmp_path):
    sel = Selection(methods=("dpl",), seeds=(1,), overrides=parse_overrides(["optim.epochs=2"]))
    plan = sweeps.make_sweep(sweeps.expand({"lr": [0.1, 0.2, 0.3, 0.4]}), "smoke", sel, name="s")
    trials = plan.sweep.trials
    result = records.TrialResult(epoch=1, objective=1.0, val={})
    for t, status in zip(trials[:3], ("done", "stopped", "failed")):
        rows = records.trial_rows("s", "r1", t, status, result, None)
        records.write_trial(ResultsRoot(tmp_path), "s", "r1", rows)
    units = plan_units(plan, 1, skipped_ids(plan, ResultsRoot(tmp_path)))
    assert [u.key for u in units.train] == [trials[2].key, trials[3].key]
    assert all(u.kind == "setting" for u in units.train)


# ---- on Ray (one instance for the module) ---------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    from dplbench.run.prepare import ensure_synthetic

    root = tmp_path_factory.mktemp("sweep")
    ensure_synthetic(str(root / "shards"))
    # address="local": a fresh instance even when someone's `ray start` cluster runs on the
    # machine (the commands below find it initialised and reuse it).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(address="local", num_cpus=2, log_to_driver=False, logging_level=logging.WARNING)
    yield root
    ray.shutdown()


def _live_placement_groups() -> list[str]:
    from ray.util.placement_group import placement_group_table

    return [k for k, v in placement_group_table().items() if v["state"] != "REMOVED"]


@pytest.mark.slow
@pytest.mark.cluster
def test_asha_sweep_stops_a_trial_and_a_run_right_after_gets_resources(cluster):
    data, res = str(cluster / "shards"), str(cluster / "results")
    # On the synthetic set, lr 0.1 and 0.05 learn (val 65-70% at the end) while 1e-9 and 1e-8
    # leave the random-init model at chance (20%): trials 3-4 reach ASHA's first rung below the
    # recorded ones and are stopped.
    args = ["tune", "--param", "optim.lr", "--values", "0.1,0.05,1e-9,1e-8", "--suite", "smoke"]
    args += ["--seeds", "1", "--scheduler", "asha", "--grace-period", "1", "--cpus", "2"]
    args += ["--data", data, "--results", res, "--loader-workers", "0", "--name", "lr"]
    out = CliRunner().invoke(_app(), [*args, "optim.epochs=3"])
    assert out.exit_code == 0, out.output
    trials = records.read_trials(ResultsRoot(res), "lr")
    status = {r["trial"]: r["status"] for r in trials}
    assert len(status) == 4 and "stopped" in status.values() and "done" in status.values()
    done = [r for r in trials if r["status"] == "done"]
    assert all(r["test_hm"] is not None and r["job_val_accuracy"] is not None for r in done)
    assert {r["optim.lr"] for r in trials} == {1e-9, 1e-8, 0.05, 0.1}  # parameters as columns
    out_dir = Path(res) / "sweeps" / "lr"
    assert (out_dir / "objective.png").stat().st_size > 0
    best = (out_dir / "best.txt").read_text().strip()
    assert best.startswith("optim.lr=") and best in out.output
    from dplbench.results import store

    rows = store.query(ResultsRoot(res), "SELECT params FROM rows").column("params").to_pylist()
    assert rows and all('"optim.lr"' in p and '"sweep": "lr"' in p for p in rows)

    assert _live_placement_groups() == []  # stopped trials left nothing behind
    from dplbench.plan.suites import load_suite
    from dplbench.run.driver import run_plan

    suite = load_suite(
        "smoke",
        Selection(methods=("coop",), seeds=(1,), overrides=parse_overrides(["optim.epochs=1"])),
    )
    settings = RunSettings.local(data, res, loader_workers=0)
    summary = []
    t = threading.Thread(
        target=lambda: summary.append(run_plan(suite, settings, ExecOptions.local(cpus=2)))
    )
    t.start()
    t.join(timeout=150)  # a leaked placement group would make this wait forever
    assert summary and not summary[0].failed


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("fuse", [1, 2])  # 2: both trials' jobs in one fused group
def test_failing_trial_is_recorded_and_the_others_complete(cluster, fuse):
    data, res = str(cluster / "shards"), str(cluster / f"results-fail{fuse}")
    sel = Selection(methods=("dpl",), seeds=(1,), overrides=parse_overrides(["optim.epochs=2"]))
    plan = sweeps.make_sweep(
        sweeps.expand({"lr": [1e-9, 1e-8]}), "smoke", sel, name="fail", scheduler="fifo"
    )
    sweep = plan.sweep
    victim = sweep.trials[1]
    settings = RunSettings.local(data, res, loader_workers=0, fail_job=victim.jobs[0].id)
    run_plan(plan, settings, ExecOptions.local(cpus=2, max_failures=0, fuse=fuse))
    result = sweep_outputs(plan, settings.root)
    by_key = {r["trial"]: r for r in result.trials()}
    assert by_key[victim.key]["status"] == "failed"
    assert "failure injected" in by_key[victim.key]["error"]
    assert by_key[sweep.trials[0].key]["status"] == "done"
    assert result.best()["trial"] == sweep.trials[0].key
    if fuse == 2:  # the survivor trained beside the victim
        from dplbench.results import store

        fused_with = (
            store.query(ResultsRoot(res), "SELECT fused_with FROM results").column(0).to_pylist()
        )
        assert fused_with and set(fused_with) == {victim.jobs[0].id}
    assert _live_placement_groups() == []


@pytest.mark.slow
@pytest.mark.cluster
def test_a_fifo_sweep_fused_records_what_it_records_unfused(cluster):
    """--fuse under FIFO: the trials' jobs train as fused groups across settings and seeds
    (run/sweep.py), and each trial's record (validation objective, per-job validation and test
    accuracy) is the one the unfused sweep writes."""
    from dplbench.results import store

    data = str(cluster / "shards")
    sel = Selection(methods=("coop",), seeds=(1, 2), overrides=parse_overrides(["optim.epochs=2"]))
    plan = sweeps.make_sweep(
        sweeps.expand({"lr": [0.1, 0.05]}), "smoke", sel, name="fz", scheduler="fifo"
    )
    records_of = {}
    for fuse in (1, 4):
        res = str(cluster / f"results-fuse{fuse}")
        settings = RunSettings.local(data, res, loader_workers=0)
        run_plan(plan, settings, ExecOptions.local(cpus=2, fuse=fuse))
        result = sweep_outputs(plan, settings.root)
        records_of[fuse] = {(r["trial"], r["job_id"]): r for r in result.records}
        fused_with = (
            store.query(ResultsRoot(res), "SELECT fused_with FROM results").column(0).to_pylist()
        )
        assert all((f is not None and len(f.split(",")) == 3) == (fuse == 4) for f in fused_with)
    solo, fused = records_of[1], records_of[4]
    assert set(solo) == set(fused) and len(solo) == 4
    for key, r in solo.items():
        f = fused[key]
        assert r["status"] == f["status"] == "done"
        for col in ("objective", "job_val_accuracy", "test_hm", "job_test_hm", "epochs_done"):
            assert f[col] == pytest.approx(r[col]), (key, col)
