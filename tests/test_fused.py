"""Fused runs (dpl/fused.py, plan/fusion.py, run/fused_loop.py): K jobs trained as one batched model
train as their solo runs do, each with its own gradients, failures and results."""

import copy
import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from dpl.fused import FusedRuns
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
from tests.conftest import llm_overrides, tiny

FUSABLE = ("coop", "cocoop", "kgcoop", "ivlp", "maple", "promptsrc", "clip_lora", "dpl", "llamp",
           "dpl-release")  # fmt: skip
NAMES = ["dog", "cat", "red car", "sunflower"]


def _batch(seed: int, n: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, 32, 32, generator=g)
    return {
        "image": image,
        "clean": image + 0.1,
        "label": torch.randint(len(NAMES), (n,), generator=g),
        "key": [f"s{seed}-{i}" for i in range(n)],
    }


def _members(method: str, changes: list[dict]) -> tuple[list, list]:
    """Per config change: the solo model and a copy for fusing, built as a job builds them (seed
    i+1), on one frozen CLIP."""
    solos, fused = [], []
    for i, change in enumerate(changes):
        cfg = method_config(method, tiny({**llm_overrides(method), **change}))
        clip = frozen_clip(cfg.backbone)
        torch.manual_seed(i + 1)
        solo = build_method(cfg, clip)
        solo.set_classes(NAMES)
        twin = build_method(cfg, clip)
        twin.load_trainable_state(solo.trainable_state())
        twin.set_classes(NAMES)
        solos.append(solo.train())
        fused.append(twin.train())
    return solos, fused


def _train_solo(model, seed: int, steps: int) -> list[float]:
    torch.manual_seed(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(steps):
        loss = sum(model.losses(_batch(seed * 100 + step), step, steps).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _train_fused(models, seeds: list[int], steps: int) -> list[list[float]]:
    runs = FusedRuns(models, seeds, torch.device("cpu"))
    opts = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05) for m in models
    ]
    out = [[] for _ in models]
    for step in range(steps):
        terms = runs.losses([_batch(s * 100 + step) for s in seeds], step, [steps] * len(seeds))
        losses = [sum(t.values()) for t in terms]
        for o in opts:
            o.zero_grad()
        sum(losses).backward()
        for o, loss, record in zip(opts, losses, out):
            o.step()
            record.append(float(loss.detach()))
    return out


def _close(solos, fused, solo_losses, fused_losses) -> None:
    for a, b in zip(solo_losses, fused_losses):
        assert b == pytest.approx(a, rel=1e-4)
    for s, f in zip(solos, fused):
        for (name, p), (_, q) in zip(s.named_parameters(), f.named_parameters()):
            if p.requires_grad:
                assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("method", FUSABLE)
def test_three_seeds_fused_train_as_they_do_alone(method):
    solos, fused = _members(method, [{}, {}, {}])
    seeds = [1000, 2000, 3000]
    solo_losses = [_train_solo(m, s, 3) for m, s in zip(solos, seeds)]
    _close(solos, fused, solo_losses, _train_fused(fused, seeds, 3))


def test_a_group_that_differs_in_lr_and_p_max_trains_as_alone():
    changes = [{"iwtd": {"p_max": p}, "optim": {"lr": lr}} for p, lr in ((0.3, 1e-3), (0.6, 5e-3))]
    solos, fused = _members("dpl", changes)
    assert [m.cfg.iwtd.p_max for m in fused] == [0.3, 0.6]
    seeds = [11, 22]
    solo_losses = [_train_solo(m, s, 3) for m, s in zip(solos, seeds)]
    _close(solos, fused, solo_losses, _train_fused(fused, seeds, 3))


def test_a_loss_term_of_one_run_moves_only_that_runs_parameters():
    _, fused = _members("dpl", [{}, {}, {}])
    runs = FusedRuns(fused, [1, 2, 3], torch.device("cpu"))
    terms = runs.losses([_batch(s) for s in (1, 2, 3)], 0, [1, 1, 1])
    terms[1]["ce"].backward()
    for k, model in enumerate(fused):
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        moved = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert moved == (k == 1), k
    assert all(p.grad is None for p in fused[0].clip.parameters())  # the frozen CLIP is frozen


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


def _run(shards, results, jobs, fuse: int):
    settings = RunSettings.local(str(shards), str(results), loader_workers=0)
    suite = Plan("smoke", tuple(jobs))
    return run_plan(suite, settings, ExecOptions.local(use_ray=False, fuse=fuse))


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


def test_copy_keeps_the_frozen_clip_shared():
    """Members built for fusing share one frozen CLIP object (what FusedRuns requires)."""
    _, fused = _members("coop", [{}, {}])
    assert fused[0].clip is fused[1].clip
    with pytest.raises(ValueError, match="one shared frozen CLIP"):
        other = copy.deepcopy(fused[1])
        FusedRuns([fused[0], other], [1, 2], torch.device("cpu"))
