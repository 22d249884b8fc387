"""`execute(plan, request)`: the library's front door. It runs a plan (a suite, a sweep or an
ablation: plan/plan.py) with every check the command line gets, so a notebook needs three lines:

    import dplbench
    request = dplbench.LaunchRequest.of(suite="smoke")
    result = dplbench.execute(dplbench.plan_of(request), request)
    result.summary_rows()  # per method and dataset: base, novel, HM (or accuracy)

In order: plug-in methods are loaded; the pre-run checks (run/preflight.py: LLM caches,
`--jobs-per-gpu auto`, `--fuse`, the plan's units, the estimate on a dry run); on a dry run it
stops there. Otherwise the plan's units run (run/driver.py; a sweep's: run/sweep.py), then its
finishing step (run/finish.py: a sweep's summary, an ablation's table). Events reach `on_event`
(the CLI's live table) and the experiment tracker; before anything runs, one `PlanChecked` says
how it was planned.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpl.methods import load_plugins, plugin_modules
from dplbench.data.errors import DataError
from dplbench.plan.plan import Plan
from dplbench.request import LaunchRequest
from dplbench.run import interrupt
from dplbench.run.events import PlanChecked, Sink, StopAsked, fan
from dplbench.run.preflight import Preflight, preflight

if TYPE_CHECKING:  # the run's modules load only when a plan runs (a dry run stays light)
    from dplbench.results.sweeps import SweepResult
    from dplbench.run.driver import RunSummary
    from dplbench.run.finish import AblationTable


@dataclass
class Execution:
    plan: Plan
    request: LaunchRequest
    checks: Preflight
    summary: RunSummary | None = None  # one outcome per unit that ran
    finished: SweepResult | AblationTable | None = None  # the finishing step's (run/finish.py)
    stopped_local_cluster: bool = False  # it started a local Ray and stopped it

    @property
    def failed(self) -> bool:
        return self.summary is not None and bool(self.summary.failed)

    @property
    def interrupted(self) -> str | None:
        """The signal that stopped the run (Ctrl-C: SIGINT), None when it ran to its end."""
        return self.summary.interrupted if self.summary is not None else None

    @property
    def nothing_to_do(self) -> bool:
        """--resume found every job's results: nothing ran, Ray was not started."""
        return self.checks.nothing_to_do and not self.request.output.dry_run

    def summary_rows(self) -> list[dict[str, Any]]:
        """Per method and dataset, the mean over seeds of every job of the plan with results
        (this run's, and with --resume those it kept): base, novel and HM for base-to-novel
        jobs, else the accuracy (results/summary.py)."""
        from dplbench.results.summary import summary_rows

        ids = [j.id for j in self.plan.jobs] if self.summary else []
        return summary_rows(self.request.root, ids)


def _tracker(plan: Plan, request: LaunchRequest) -> Any:
    """The experiment tracker's sink, when one is asked for (run/tracking.py)."""
    if request.policy.track is None:
        return None
    from dplbench.run.tracking import Tracker

    return Tracker(request.policy.track, request.root, plan, request.policy.track_uri)


def execute(
    plan: Plan, request: LaunchRequest | None = None, on_event: Sink | None = None
) -> Execution:
    """Check, prepare and run `plan` as `request` says; see the module docstring."""
    request = request or LaunchRequest()
    load_plugins(plugin_modules(request.what.plugins))
    checks = preflight(plan, request)
    result = Execution(plan, request, checks)
    from dplbench.run.prepare import check_data, prepare

    need_val = plan.sweep is not None
    if request.output.dry_run:
        if not plan.data.synthesize:  # a plan made here may run where its data lives: a note
            try:
                check_data(checks.units.jobs, request.data, need_val)
            except DataError as e:
                checks.notes.append(f"not runnable here yet: {e}")
        return result
    from dplbench.run.driver import RunSummary, run_plan
    from dplbench.run.finish import FINISH

    if checks.nothing_to_do:  # --resume with every job's results there: no Ray, no files
        result.summary = RunSummary(plan.name, "", skipped=list(checks.units.skipped))
        return result
    # The data the units read, before the job table and Ray: a missing dataset is one line.
    prepare(checks.units.jobs, request.data, plan.data.synthesize, need_val)
    if on_event is not None:
        on_event(PlanChecked(plan.name, checks))
    from dplbench.run.settings import ExecOptions, RunSettings

    opts = ExecOptions.of(request, jobs_per_gpu=checks.jobs_per_gpu, fuse=checks.fuse)
    settings = RunSettings.of(request, plan.suite)
    tracker = _tracker(plan, request)
    # Ctrl-C / SIGTERM: the units stop, what finished stays, the live table says so.
    asked = (lambda name: on_event(StopAsked(name))) if on_event is not None else None
    with interrupt.catching(asked), _ray(plan, opts, settings) as ray:
        result.summary = run_plan(plan, settings, opts, fan(on_event, tracker))
    result.stopped_local_cluster = ray is not None and ray.stopped_local_cluster
    if request.policy.compact and not result.summary.interrupted:
        _compact(plan, settings.root, result.checks.notes)
    finish = FINISH.get(plan.kind)
    if finish is not None:
        result.finished = finish(plan, settings.root, result.summary.skipped)
    if tracker is not None:
        result.checks.notes.append(f"tracked in {tracker.kind}: {tracker.where}")
    return result


def _compact(plan: Plan, root: Any, notes: list[str]) -> None:
    """The partitions this run wrote to, compacted (results/compact.py). The run's results are
    published already: a compaction that fails says so and leaves them readable as they are."""
    from dplbench.errors import ConfigError
    from dplbench.results.compact import compact

    mine = {f"suite={plan.suite}/method={m}" for m in {j.method for j in plan.jobs}}
    parts = {"rows": mine, "epochs": mine, "outcomes": mine, "status": {f"suite={plan.suite}"}}
    try:
        done = compact(root, partitions=parts)
    except (OSError, ConfigError) as e:
        notes.append(f"results not compacted ({e}); dplbench results compact --results {root}")
        return
    if done.files_in:
        notes.append(f"results compacted: {done.files_in} files into {done.files_out} "
                     f"({done.seconds:.1f} s; dplbench results compact)")  # fmt: skip


def _ray(plan: Plan, opts: Any, settings: Any) -> Any:
    """The Ray session of a run (none with --no-ray): Ray's messages to R/logs/ray-<run>.log; a
    local cluster started for a run of single-worker jobs (plain trials) needs no dashboard."""
    if not opts.use_ray:
        return contextlib.nullcontext()
    from dplbench.run import launcher

    plain = plan.sweep is None and all(j.workers == 1 for j in plan.jobs)
    log = settings.root.ray_log(settings.run_id)
    return launcher.session(opts, log, dashboard=not (plain and opts.plain_trials))
