"""The checks before anything runs, for the command line and a notebook alike (`run.execute`):
the LLM caches the jobs need, how many jobs share a GPU (`--jobs-per-gpu auto`), the fused group
size (`--fuse`), the plan's units as they will run (plan/units.py, with what --resume skips and
the leases other drivers hold now), and what the plan will cost (plan/cost.py). Reads files only:
a dry run imports neither torch nor Ray. The data itself is checked and prepared by
run/prepare.py once the run is sure to start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from dplbench.errors import ConfigError
from dplbench.plan import cost
from dplbench.plan.jobs import Job
from dplbench.plan.llm import missing_caches
from dplbench.plan.plan import Plan
from dplbench.plan.units import Units, plan_units
from dplbench.request import LaunchRequest
from dplbench.run.leases import held_elsewhere
from dplbench.run.resume import skipped_runs

log = logging.getLogger(__name__)


@dataclass
class Preflight:
    jobs: tuple[Job, ...]
    jobs_per_gpu: int = 1
    fuse: int = 1
    notes: list[str] = field(default_factory=list)  # what a dry run or the console should say
    missing_caches: list[str] = field(default_factory=list)
    units: Units = field(default_factory=Units)  # what runs as one trial (plan/units.py)
    kept: dict[str, str] = field(default_factory=dict)  # --resume skips: job id -> its rows' run

    @property
    def nothing_to_do(self) -> bool:
        """--resume found every job's results: no unit runs and none is held elsewhere."""
        return bool(self.kept) and not self.units.all and not self.units.held

    @property
    def groups(self) -> tuple:
        return self.units.groups

    @property
    def solo(self) -> dict[str, str]:
        """job id -> why it trains alone (with --fuse above 1)."""
        return dict(self.units.solo)

    @property
    def packing(self) -> str:
        parts = [f"{self.jobs_per_gpu} jobs per GPU"] if self.jobs_per_gpu > 1 else []
        if self.groups:
            parts.append(f"{len(self.groups)} fused groups of up to {self.fuse}")
        return " · ".join(parts)

    def group_of(self) -> dict[str, str]:
        """job id -> its group's label (g1, g2, ...)."""
        return {j.id: f"g{i}" for i, g in enumerate(self.groups, 1) for j in g.jobs}


def resolve_jobs_per_gpu(
    request: LaunchRequest, jobs: Sequence[Job], calib: cost.Calibration | None
) -> tuple[int, str | None]:
    value, gpus = request.how.jobs_per_gpu, request.how.gpus
    if value != "auto":
        return int(value), None
    if not gpus:
        return 1, None
    cpus_per_gpu = (request.how.cpus or os.cpu_count() or 1) / gpus
    n, why = cost.auto_jobs_per_gpu(calib, list(jobs), cpus_per_gpu, 1.0)
    return n, f"--jobs-per-gpu auto: {why}"


def resolve_fuse(
    request: LaunchRequest, jobs: Sequence[Job], calib: cost.Calibration | None
) -> tuple[int, str | None]:
    """--fuse K, or auto: as many runs as the GPU's calibrated memory holds (at most
    cost.MAX_FUSE); without a GPU calibration, one."""
    if request.how.fuse != "auto":
        return int(request.how.fuse), None
    k, why = cost.auto_fuse(calib, list(jobs), request.how.gpus)
    return k, f"--fuse auto: {why}"


def estimate_line(
    request: LaunchRequest, jobs: Sequence[Job], calib: cost.Calibration | None, per_gpu: int
) -> str:
    """GPU-hours and wall time of the jobs from this machine's bench calibration."""
    if calib is None:
        return "no calibration: run `dplbench bench model` for estimates"
    gpus = request.how.gpus
    slots = gpus * per_gpu if gpus else (request.how.cpus or os.cpu_count() or 1)
    est = cost.estimate(list(jobs), calib, slots)
    hours = "GPU-hours" if gpus else "CPU-job-hours"
    bound = " (at least: packed jobs are taken not to slow each other)" if per_gpu > 1 else ""
    return (
        f"estimate from {calib.device}: {est.gpu_hours:.2f} {hours}, {est.wall_hours:.2f} h wall "
        f"on {slots} job places{bound}; {est.covered} of {est.jobs} jobs calibrated"
    )


def fusion_notes(checked: Preflight) -> list[str]:
    lines = []
    for i, g in enumerate(checked.groups, 1):
        lines.append(f"fused g{i}: {' '.join(j.id[:10] for j in g.jobs)} ({g.jobs[0].method})")
    by_reason: dict[str, list[str]] = {}
    for job_id, why in checked.solo.items():
        by_reason.setdefault(why, []).append(job_id[:10])
    lines += [f"solo ({why}): {' '.join(ids)}" for why, ids in by_reason.items()]
    return lines


def preflight(plan: Plan, request: LaunchRequest) -> Preflight:
    """Every check that needs no data and no cluster. A missing LLM cache is an error unless
    this is a dry run (then it is listed with the command that makes it)."""
    jobs = plan.jobs
    checked = Preflight(tuple(jobs))
    checked.missing_caches = missing_caches(jobs, request.llm_caches)
    if checked.missing_caches and not request.output.dry_run:
        raise ConfigError(checked.missing_caches[0])
    checked.notes += checked.missing_caches
    root = request.root
    calib = cost.load_for(request.how.gpus, root.bench_dir())
    checked.jobs_per_gpu, why = resolve_jobs_per_gpu(request, jobs, calib)
    if why:
        checked.notes.append(why)
        log.info(why)
    checked.fuse, why = resolve_fuse(request, jobs, calib)
    if why:
        checked.notes.append(why)
    if checked.fuse > 1 and plan.sweep is not None and plan.sweep.scheduler == "asha":
        checked.fuse = 1
        checked.notes.append(
            "ASHA runs the trials unfused: it stops each on its own reports "
            "(--scheduler fifo fuses them)"
        )
    checked.kept = skipped_runs(plan, root) if request.policy.resume else {}
    done = set(checked.kept)
    # A sweep takes no leases; a suite's jobs held by another driver now are left to it.
    held = {} if plan.sweep is not None else held_elsewhere(root, [j.id for j in jobs])
    checked.units = plan_units(plan, checked.fuse, done, held)
    if checked.fuse > 1:
        checked.notes += fusion_notes(checked)
    if request.output.dry_run:
        checked.notes.append(estimate_line(request, jobs, calib, checked.jobs_per_gpu))
    return checked
