"""A plan's units: what runs as one Tune trial, computed in one place for the dry run and the run.

    job       one job (a training job that runs alone, an evaluation job of xd / dg)
    group     a fused group: jobs trained together as one batched model (plan/fusion.py)
    setting   a sweep setting's jobs, run at once and stopped together by ASHA

The inputs are the plan and what the request and the results root say: `fuse` (the resolved
--fuse; a sweep under ASHA runs unfused), the jobs `--resume` skips (their rows, or their trial's
record, are there) and the jobs another driver holds (run/leases.py). The dry run passes what it
reads now; the run passes what it finds when it starts, so both print and run the same units.
Training units come first; evaluation jobs (xd / dg targets) run after the training they load.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from dplbench.plan.fusion import FusedGroup, fused_groups
from dplbench.plan.jobs import Job
from dplbench.plan.plan import Plan

UNIT_KINDS = ("job", "group", "setting")


@dataclass(frozen=True)
class Unit:
    key: str  # the trial's name: the job id, the group's key, or the sweep trial's key
    jobs: tuple[Job, ...]
    kind: str = "job"

    @property
    def fused(self) -> bool:
        return self.kind == "group"


@dataclass(frozen=True)
class Units:
    train: tuple[Unit, ...] = ()
    evaluate: tuple[Unit, ...] = ()  # run once the training they load has ended
    skipped: tuple[Job, ...] = ()  # --resume: their rows (a sweep: their trial's record) exist
    held: tuple[Job, ...] = ()  # another driver runs them (or the training they load)
    solo: Mapping[str, str] = field(default_factory=dict)  # job id -> why it runs alone

    @property
    def all(self) -> tuple[Unit, ...]:
        return self.train + self.evaluate

    @property
    def groups(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.all if u.fused)

    @property
    def jobs(self) -> tuple[Job, ...]:
        return tuple(j for u in self.all for j in u.jobs)


def _solo_or_groups(jobs: list[Job], fuse: int) -> tuple[list[Unit], dict[str, str]]:
    units, solo = fused_groups(jobs, fuse)
    out = [
        Unit(u.key, u.jobs, "group") if isinstance(u, FusedGroup) else Unit(u.id, (u,))
        for u in units
    ]
    return out, solo if fuse > 1 else {}


def plan_units(
    plan: Plan, fuse: int = 1, done: Collection[str] = (), held: Collection[str] = ()
) -> Units:
    """The plan's units (module docstring). `done`: ids of jobs --resume skips; `held`: ids of
    jobs another driver holds."""
    done, held = set(done), set(held)
    skipped = tuple(j for j in plan.jobs if j.id in done)
    if plan.sweep is not None:  # sweeps take no leases; --resume skips whole trials
        trials = [t for t in plan.sweep.trials if not all(j.id in done for j in t.jobs)]
        if fuse > 1:
            units, solo = _solo_or_groups([j for t in trials for j in t.jobs], fuse)
            return Units(tuple(units), skipped=skipped, solo=solo)
        units = tuple(Unit(t.key, t.jobs, "setting") for t in trials)
        return Units(units, skipped=skipped)
    pending = [j for j in plan.jobs if j.id not in done]
    training = [j for j in pending if j.source is None]
    away = {j.id for j in training if j.id in held}
    # An evaluation job loads its training job's state: held with it, else held on its own.
    evaluations = [j for j in pending if j.source is not None]
    away |= {j.id for j in evaluations if j.id in held or j.source in away}
    train, solo = _solo_or_groups([j for j in training if j.id not in away], fuse)
    evaluate = tuple(Unit(j.id, (j,)) for j in evaluations if j.id not in away)
    held_jobs = tuple(j for j in pending if j.id in away)
    return Units(tuple(train), evaluate, skipped, held_jobs, solo)
