"""Fused runs (plan/fusion.py, run/train_loop.py over dpl/members.py): K jobs trained as one model
of members train as their solo runs do, each with its own gradients, failures, resume point and
results. The model-level equality of every method is tests/test_members.py."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from dpl.members import Streams
from dpl.methods import build_method, method_config
from dplbench.cli import app
from dplbench.plan.fusion import FusedGroup, fused_groups
from dplbench.plan.plan import Plan
from dplbench.plan.suites import load_suite
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.driver import run_plan
from dplbench.run.prepare import ensure_synthetic
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.worker import frozen_clip
from tests.conftest import tiny

NAMES = ["dog", "cat", "red car", "sunflower"]


def test_a_loss_term_of_one_member_moves_only_that_members_parameters():
    cfg = method_config("dpl", tiny())
    model = build_method([cfg] * 3, frozen_clip(cfg.backbone),
                         [torch.Generator().manual_seed(s) for s in (1, 2, 3)])  # fmt: skip
    model.set_classes(NAMES)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(12, 3, 32, 32, generator=g)
    batch = {"image": image, "clean": image, "label": torch.randint(4, (12,), generator=g),
             "key": [f"k{i}" for i in range(12)]}  # fmt: skip
    terms = model.train().member_losses(batch, 0, 1, Streams.seeded([1, 2, 3], image.device))
    terms.values[1].sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            moved = [bool(p.grad[k].abs().sum() > 0) for k in range(3)]
            assert moved[0] is False and moved[2] is False, name
    assert all(p.grad is None for p in model.clip.parameters())  # the frozen CLIP is frozen


def test_the_planner_groups_what_shares_shapes_and_says_why_the_rest_is_solo():
    jobs = load_suite("smoke", {"seeds": (1, 2, 3), "overrides": {"optim": {"epochs": 2}}}).jobs
    units, solo = fused_groups(jobs, 2)
    groups = [u for u in units if isinstance(u, FusedGroup)]
    # coop x3 and dpl x3 in groups of at most 2 (3 = 2 + 1: one left over per method)
    assert sorted(len(g.jobs) for g in groups) == [2, 2]
    assert all(len({j.method for j in g.jobs}) == 1 for g in groups)
    zs = [j for j in jobs if j.method == "zsclip"]
    assert all(solo[j.id] == "zsclip trains nothing" for j in zs)
    assert sum(why == "left over after its group filled" for why in solo.values()) == 2
    # a shape that differs keeps jobs apart; a learning rate does not
    coop = next(j for j in jobs if j.method == "coop")

    def changed(**optim):
        cfg = dataclasses.replace(
            coop.config, optim=dataclasses.replace(coop.config.optim, **optim)
        )
        return dataclasses.replace(coop, seed=9, config=cfg)

    units, solo = fused_groups([coop, changed(lr=0.5)], 4)
    assert isinstance(units[0], FusedGroup)
    units, solo = fused_groups([coop, changed(batch_size=2)], 4)
    assert not any(isinstance(u, FusedGroup) for u in units)
    assert "no other job shares its shapes" in solo[coop.id]


def test_dry_run_shows_the_groups(tmp_path):
    args = ["run", "--suite", "smoke", "--methods", "coop,dpl", "--seeds", "1,2,3", "--fuse", "3"]
    out = CliRunner().invoke(app, [*args, "--dry-run", "--format", "json"])
    assert out.exit_code == 0, out.output
    jobs = [json.loads(line) for line in out.stdout.splitlines()]
    assert all(len(j["fused_with"]) == 2 and j["solo_reason"] is None for j in jobs)
    table = CliRunner().invoke(app, [*args, "--dry-run"])
    assert "fused g1:" in table.stdout and "fused g2:" in table.stdout


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def _run(shards, results, jobs, fuse: int, fail_job: str | None = None, resume: bool = False):
    settings = RunSettings.local(
        str(shards), str(results), loader_workers=0, fail_job=fail_job, resume=resume
    )
    suite = Plan("smoke", tuple(jobs))
    opts = ExecOptions.local(use_ray=False, fuse=fuse, resume=resume)
    return run_plan(suite, settings, opts)


def _rows(results) -> dict:
    table = store.query(
        ResultsRoot(results), "SELECT job_id, subsample, correct, fused_with FROM results"
    )
    return {(r["job_id"], r["subsample"]): r for r in table.to_pylist()}


def _epochs(results) -> dict:
    table = store.query(ResultsRoot(results), "SELECT job_id, epoch, loss FROM epochs")
    return {(r["job_id"], r["epoch"]): r["loss"] for r in table.to_pylist()}


def test_a_member_whose_loss_turns_nan_fails_alone(tmp_path, shards):
    jobs = list(load_suite("smoke", {"methods": ("coop",), "seeds": (1, 2, 3),
                                     "overrides": {"optim": {"epochs": 2}}}).jobs)  # fmt: skip
    bad = jobs[1]
    wild = dataclasses.replace(bad.config.optim, lr=1e30)  # a learning rate that diverges
    jobs[1] = dataclasses.replace(bad, config=dataclasses.replace(bad.config, optim=wild))
    summary = _run(shards, tmp_path / "fused", jobs, 3)
    status = {o.job.id: (o.status, o.error) for o in summary.outcomes}
    assert status[jobs[1].id][0] == "failed" and "not finite" in status[jobs[1].id][1]
    _run(shards, tmp_path / "solo", [jobs[0], jobs[2]], 1)
    fused, solo = _rows(tmp_path / "fused"), _rows(tmp_path / "solo")
    assert set(fused) == set(solo)  # the others' rows, and nothing of the failed one
    assert all(fused[k]["correct"] == solo[k]["correct"] for k in solo)
    assert _epochs(tmp_path / "fused").keys() >= _epochs(tmp_path / "solo").keys()


@pytest.mark.slow
@pytest.mark.cluster
def test_fused_smoke_run_writes_the_rows_of_the_solo_run_even_after_a_kill(tmp_path, shards):
    """The issue's check: `run --suite smoke --methods coop,dpl --seeds 1,2,3 --fuse 3` writes the
    job ids and accuracies of `--fuse 1`; with a worker killed mid-group (Tune restarts the
    trial, every member resumes from its own checkpoint), every epoch row appears once."""
    common = ["run", "--suite", "smoke", "--methods", "coop,dpl", "--seeds", "1,2,3"]
    common += ["--data", str(shards), "--loader-workers", "0", "optim.epochs=3"]
    solo = CliRunner().invoke(app, [*common, "--fuse", "1", "--results", str(tmp_path / "solo")])
    assert solo.exit_code == 0, solo.output
    sel = {"methods": ("dpl",), "seeds": (2,), "overrides": {"optim": {"epochs": 3}}}
    (dpl,) = load_suite("smoke", sel).jobs
    env = {"DPLBENCH_FAIL_JOB": f"{dpl.id}@2:kill"}  # SIGKILL the group's process at epoch 2
    fused = CliRunner().invoke(
        app, [*common, "--fuse", "3", "--results", str(tmp_path / "fused")], env=env
    )
    assert fused.exit_code == 0, fused.output
    a, b = _rows(tmp_path / "solo"), _rows(tmp_path / "fused")
    assert set(a) == set(b) and all(a[k]["correct"] == b[k]["correct"] for k in a)
    assert all(len(b[k]["fused_with"].split(",")) == 2 for k in b)
    ea, eb = _epochs(tmp_path / "solo"), _epochs(tmp_path / "fused")
    assert set(ea) == set(eb) and all(eb[k] == pytest.approx(ea[k], rel=1e-4) for k in ea)
    rows = store.query(
        ResultsRoot(tmp_path / "fused"), "SELECT job_id, epoch FROM epochs"
    ).to_pylist()
    assert len(rows) == len({(r["job_id"], r["epoch"]) for r in rows})  # each epoch once
    assert (tmp_path / "fused" / "logs" / ".killed").exists()  # the kill happened


def test_a_group_resumes_its_members_from_different_epochs(tmp_path, shards):
    """Two members stopped at different epochs (a at its epoch 2, b at its epoch 1) resume as one
    group, each from its own checkpoint: b trains alone while a waits, then both; the rows and
    every epoch's loss are the uninterrupted solo runs'."""
    sel = {"methods": ("dpl",), "seeds": (1, 2), "overrides": {"optim": {"epochs": 3}}}
    a, b = load_suite("smoke", sel).jobs
    broken = _run(shards, tmp_path / "r", [a, b], 2, fail_job=f"{a.id}@2,{b.id}@1")
    assert [o.status for o in broken.outcomes] == ["failed", "failed"]
    resumed = _run(shards, tmp_path / "r", [a, b], 2, resume=True)
    assert [o.status for o in resumed.outcomes] == ["done", "done"]
    assert [u.unit.kind for u in resumed.units] == ["group"]
    _run(shards, tmp_path / "clean", [a, b], 1)
    got, want = _rows(tmp_path / "r"), _rows(tmp_path / "clean")
    assert set(got) == set(want) and all(got[k]["correct"] == want[k]["correct"] for k in want)
    rows = store.query(ResultsRoot(tmp_path / "r"),
                       "SELECT job_id, epoch, loss FROM epochs").to_pylist()  # fmt: skip
    by_epoch = {(r["job_id"], r["epoch"]): r["loss"] for r in rows}
    assert len(rows) == len(by_epoch) == 6  # every epoch of both once, across the two runs
    clean = _epochs(tmp_path / "clean")
    assert all(by_epoch[k] == pytest.approx(clean[k], rel=1e-5) for k in clean)
