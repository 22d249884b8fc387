"""`dplbench run` and `dplbench ablate`: a suite's jobs, checked, prepared and executed in
dependency order: training jobs first, then the evaluation jobs that load their checkpoints (xd,
dg). Checks come first (unknown names, missing shards), so a run that never started writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from dplbench.plan.ablations import Ablation
from dplbench.plan.jobs import Job
from dplbench.plan.suites import Suite
from dplbench.results import store
from dplbench.results.ablations import done_job_ids
from dplbench.run import launcher
from dplbench.run.context import LocalContext
from dplbench.run.launcher import TrialEvent, job_trial
from dplbench.run.prepare import prepare
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.worker import run_job

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    job: Job
    status: str  # done | failed
    error: str | None = None


@dataclass
class RunSummary:
    suite: str
    run_id: str
    outcomes: list[JobOutcome] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)  # --resume: rows already there

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status != "done"]


def completed_job_ids(results_root: str) -> set[str]:
    if not store.has_rows(results_root):
        return set()
    table = store.query(results_root, "SELECT DISTINCT job_id FROM rows")
    return set(table.column("job_id").to_pylist())


def run_jobs(
    jobs: list[Job], settings: RunSettings, opts: ExecOptions, on_event: TrialEvent | None = None
) -> list[JobOutcome]:
    """Run jobs (one phase: no job here depends on another here); returns their outcomes."""
    if not jobs:
        return []
    emit = on_event or (lambda *a: None)
    if not opts.use_ray:
        return [_run_local(j, settings, emit, opts.resume) for j in jobs]
    ends = launcher.launch(
        job_trial,
        {j.id: [j] for j in jobs},
        settings,
        opts,
        Path(settings.results).resolve() / "ray",
        on_event,
    )
    by_id = {j.id: j for j in jobs}
    return [
        JobOutcome(by_id[e.key], "done" if e.status == "done" else "failed", e.error) for e in ends
    ]


def _run_local(job: Job, settings: RunSettings, emit: TrialEvent, resume: bool) -> JobOutcome:
    emit(job.id, "running", {})
    try:
        run_job(job, settings, LocalContext(settings.results, job.id, resume=resume))
    except Exception as e:  # a failed job is recorded; the others go on
        log.exception("job %s failed", job.id)
        error = f"{type(e).__name__}: {e}"
        emit(job.id, "failed", {"error": error})
        return JobOutcome(job, "failed", error)
    emit(job.id, "done", {})
    return JobOutcome(job, "done")


def run_suite(
    suite: Suite, settings: RunSettings, opts: ExecOptions, on_event: TrialEvent | None = None
) -> RunSummary:
    settings = replace(settings, suite=suite.name)
    summary = RunSummary(suite.name, settings.run_id)
    jobs = list(suite.jobs)
    if opts.resume:
        done = completed_job_ids(settings.results)
        summary.skipped = [j for j in jobs if j.id in done]
        jobs = [j for j in jobs if j.id not in done]
    prepare(jobs, settings.data, suite.data.synthesize)
    training = [j for j in jobs if j.source is None]
    evaluation = [j for j in jobs if j.source is not None]
    summary.outcomes += run_jobs(training, settings, opts, on_event)
    failed_sources = {o.job.id for o in summary.outcomes if o.status != "done"}
    blocked = [j for j in evaluation if j.source in failed_sources]
    for j in blocked:
        summary.outcomes.append(JobOutcome(j, "failed", f"its training job {j.source} failed"))
        if on_event:
            on_event(j.id, "failed", {})
    runnable = [j for j in evaluation if j.source not in failed_sources]
    summary.outcomes += run_jobs(runnable, settings, opts, on_event)
    return summary


def run_ablation(
    ab: Ablation,
    suite: Suite,
    settings: RunSettings,
    opts: ExecOptions,
    on_event: TrialEvent | None = None,
) -> RunSummary:
    """Run an ablation's suite (opts.resume: skip jobs with this ablation's rows)."""
    skipped: list[Job] = []
    if opts.resume:
        done = done_job_ids(settings.results, ab, suite.name)
        skipped = [j for j in suite.jobs if j.id in done]
        suite = replace(suite, jobs=tuple(j for j in suite.jobs if j.id not in done))
    if not suite.jobs:
        return RunSummary(suite.name, settings.run_id, [], skipped)
    # The runner's own --resume looks at any rows of a job id, labelled or not: ours is above.
    summary = run_suite(suite, settings, replace(opts, resume=False), on_event)
    summary.skipped = skipped
    return summary
