"""A plan's units (plan/units.py): computed in one place, so the dry run prints what runs."""

from dplbench.plan.plan import Plan
from dplbench.plan.suites import load_suite
from dplbench.plan.sweeps import expand, make_sweep
from dplbench.plan.units import plan_units
from dplbench.request import LaunchRequest, Selection
from dplbench.results.root import ResultsRoot
from dplbench.run import execute
from dplbench.run.leases import Leases
from dplbench.run.prepare import ensure_synthetic

EPOCHS = {"optim": {"epochs": 1}}


def _keys(units) -> list[tuple[str, list[str]]]:
    return [(u.kind, [j.id for j in u.jobs]) for u in units]


def test_units_fuse_skip_and_hold_as_asked():
    plan = load_suite("smoke", {"methods": ("coop", "dpl"), "seeds": (1, 2, 3)})
    coop = [j for j in plan.jobs if j.method == "coop"]
    dpl = [j for j in plan.jobs if j.method == "dpl"]
    units = plan_units(plan, 1)
    assert _keys(units.train) == [("job", [j.id]) for j in plan.jobs]
    assert units.solo == {} and units.evaluate == ()
    units = plan_units(plan, 3, done={coop[0].id}, held={dpl[1].id})
    assert _keys(units.train) == [("group", [j.id for j in coop[1:]]),
                                  ("group", [dpl[0].id, dpl[2].id])]  # fmt: skip
    assert units.skipped == (coop[0],) and units.held == (dpl[1],)
    # a group of one is a job, and says why
    units = plan_units(plan, 3, done={coop[0].id, coop[1].id})
    assert _keys(units.train)[0] == ("job", [coop[2].id])
    assert units.solo[coop[2].id] == "no other job shares its shapes (method, data, config)"


def test_evaluation_units_follow_their_training_and_are_held_with_it():
    plan = load_suite("xd", {"methods": ("coop",), "seeds": (1,), "datasets": ("imagenet",
                             "caltech101", "oxford_pets")})  # fmt: skip
    (train,) = [j for j in plan.jobs if j.source is None]
    evals = [j for j in plan.jobs if j.source is not None]
    units = plan_units(plan, 4)
    assert _keys(units.train) == [("job", [train.id])]
    assert _keys(units.evaluate) == [("job", [j.id]) for j in evals]
    held = plan_units(plan, 4, held={train.id})
    assert held.all == () and [j.id for j in held.held] == [j.id for j in plan.jobs]
    # its training ran earlier (--resume): the evaluations run
    assert _keys(plan_units(plan, 4, done={train.id}).evaluate) == _keys(units.evaluate)


def test_a_sweep_runs_settings_or_fused_groups_across_them():
    sel = Selection(methods=("coop",), seeds=(1, 2), overrides=EPOCHS)
    plan = make_sweep(expand({"lr": [0.1, 0.2]}), "smoke", sel, name="u", scheduler="fifo")
    t1, t2 = plan.sweep.trials
    assert _keys(plan_units(plan, 1).train) == [
        ("setting", [j.id for j in t1.jobs]),
        ("setting", [j.id for j in t2.jobs]),
    ]
    assert _keys(plan_units(plan, 4).train) == [("group", [j.id for j in plan.jobs])]
    # --resume keeps whole trials: the kept trial's jobs are skipped, the other's run
    skipped = plan_units(plan, 1, done={j.id for j in t1.jobs})
    assert _keys(skipped.train) == [("setting", [j.id for j in t2.jobs])]


def test_the_dry_run_prints_the_units_that_run(tmp_path):
    """--fuse 3 with --resume (one job already has rows) and a lease another driver holds: the
    dry run's units are exactly those the run then runs."""
    shards, res = tmp_path / "shards", tmp_path / "r"
    ensure_synthetic(str(shards))
    base = dict(data=str(shards), results=str(res), use_ray=False, loader_workers=0)
    sel = {"methods": ("coop", "dpl"), "seeds": (1, 2, 3), "overrides": EPOCHS}
    plan = load_suite("smoke", sel)
    coop1 = next(j for j in plan.jobs if j.method == "coop" and j.seed == 1)
    dpl2 = next(j for j in plan.jobs if j.method == "dpl" and j.seed == 2)
    first = execute(Plan("smoke", (coop1,)), LaunchRequest.of(**base))
    assert not first.failed
    other = Leases(ResultsRoot(res), "another-driver")
    assert other.acquire(dpl2.id) is None  # held by a live driver (this process) until released
    try:
        request = LaunchRequest.of(**base, resume=True, fuse="3")
        dry = execute(plan, request.replace(dry_run=True)).checks.units
        leases = sorted(p.stem for p in (res / "leases").glob("*.json"))
        assert leases == [dpl2.id]  # the dry run read the leases and took none
        ran = execute(plan, request)
    finally:
        other.release_all()
    assert not ran.failed
    assert _keys(dry.all) == _keys(u.unit for u in ran.summary.units)
    assert [u.kind for u in dry.all] == ["group", "group"]
    assert {j.id for u in dry.all for j in u.jobs} == {j.id for j in plan.jobs} - {
        coop1.id,
        dpl2.id,
    }
    assert dry.skipped == (coop1,) and dry.held == (dpl2,)
    assert ran.summary.skipped == [coop1] and dpl2.id in ran.summary.elsewhere
