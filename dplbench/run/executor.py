"""`execute(plan, request)`: the library's front door. It runs a suite, a sweep or an ablation with
every check the command line gets, so a notebook needs three lines:

    from dplbench.plan.suites import load_suite
    from dplbench.request import LaunchRequest
    from dplbench.run import execute

    result = execute(load_suite("smoke"), LaunchRequest())

In order: plug-in methods are loaded; the pre-run checks (run/preflight.py: LLM caches,
`--jobs-per-gpu auto`, the estimate on a dry run); on a dry run it stops there. Otherwise the data
is checked and prepared (run/prepare.py), and the plan runs: a suite or an ablation's variants
through run/suite.py, a sweep through run/sweep.py, both on the one Ray launcher. Trial events
reach `on_event(key, state, info)` (the CLI's live table) and the experiment tracker; before
anything runs, one `(plan name, "checked", {"checks": Preflight})` event says how it was planned.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from dpl.methods import load_plugins, plugin_modules
from dplbench.plan.ablations import AblationPlan
from dplbench.plan.suites import Suite
from dplbench.plan.sweeps import Sweep
from dplbench.request import LaunchRequest
from dplbench.run.preflight import Preflight, preflight

Plan = Suite | Sweep | AblationPlan


@dataclass
class Execution:
    plan: Plan
    request: LaunchRequest
    checks: Preflight
    summary: Any = None  # run/suite.py RunSummary (a suite, an ablation's variants)
    sweep: Any = None  # results/sweeps.py SweepResult
    table: Any = None  # an ablation's table: (markdown text, path)

    @property
    def failed(self) -> bool:
        if self.summary is not None and self.summary.failed:
            return True
        return self.sweep is not None and any(r["status"] == "failed" for r in self.sweep.trials())


def _events(plan: Plan, request: LaunchRequest, on_event: Any) -> tuple[Any, Any]:
    """The sink trial events go to: the caller's, and the tracker's when one is asked for."""
    if request.policy.track is None:
        return on_event, None
    from dplbench.run.tracking import Tracker

    tracker = Tracker(request.policy.track, request.results, plan.name, request.policy.track_uri)
    if isinstance(plan, Sweep):
        items, feed = {t.key: t for t in plan.trials}, tracker.trial_event
    else:
        items, feed = {j.id: j for j in plan.jobs}, tracker.job_event

    def sink(key: str, state: str, info: dict) -> None:
        if on_event is not None:
            on_event(key, state, info)
        if key in items:
            feed(items[key], state, info)

    return sink, tracker


def execute(plan: Plan, request: LaunchRequest | None = None, on_event: Any = None) -> Execution:
    """Check, prepare and run `plan` as `request` says; see the module docstring."""
    request = request or LaunchRequest()
    load_plugins(plugin_modules(request.what.plugins))
    checks = preflight(plan.jobs, request, plan.scheduler if isinstance(plan, Sweep) else None)
    result = Execution(plan, request, checks)
    if request.output.dry_run:
        return result
    if on_event is not None:
        on_event(plan.name, "checked", {"checks": checks})
    from dplbench.run.settings import ExecOptions, RunSettings

    opts = ExecOptions.of(request, checks.jobs_per_gpu, checks.fuse)
    sink, tracker = _events(plan, request, on_event)
    suite = plan.suite if isinstance(plan, AblationPlan) else plan
    settings = RunSettings.of(request, plan.suite if isinstance(plan, Sweep) else suite.name)
    with _ray(plan, opts, settings):
        if isinstance(plan, Sweep):
            from dplbench.run.sweep import run_sweep

            result.sweep = run_sweep(plan, settings, opts, sink)
        else:
            from dplbench.run.suite import run_suite

            result.summary = run_suite(suite, settings, opts, sink)
    if isinstance(plan, AblationPlan):
        result.table = ablation_table(plan, request.results)
    if tracker is not None:
        result.checks.notes.append(f"tracked in {tracker.kind}: {tracker.where}")
    return result


def _ray(plan: Plan, opts: Any, settings: Any) -> Any:
    """The Ray session of a run (none with --no-ray): Ray's messages to R/logs/ray-<run>.log; a
    local cluster started for a run of single-worker jobs (plain trials) needs no dashboard."""
    if not opts.use_ray:
        return contextlib.nullcontext()
    from dplbench.results.root import ResultsRoot
    from dplbench.run import launcher

    plain = not isinstance(plan, Sweep) and all(j.workers == 1 for j in plan.jobs)
    log = ResultsRoot(settings.results).ray_log(settings.run_id)
    return launcher.session(opts, log, dashboard=not (plain and opts.plain_trials))


def ablation_table(plan: AblationPlan, results: str) -> tuple[str, str]:
    """The ablation's table from the rows under `results` (Markdown, and where it was written)."""
    from dplbench.results import ablations as tables

    ab, name = plan.ablation, plan.suite.name
    text = tables.ablation_markdown(ab, tables.ablation_table(ab, results, name), name)
    return text, tables.write_markdown(text, results, f"{ab.name}-{name}")
