"""`dplbench run` and `dplbench ablate`: a suite's jobs, checked, prepared and executed in
dependency order: training jobs first, then the evaluation jobs that load their checkpoints (xd,
dg). Checks come first (unknown names, missing shards), so a run that never started writes
nothing. Every job's state goes to the status table (results/status.py) as it changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from dplbench import storage
from dplbench.plan.fusion import FusedGroup, fused_groups, members
from dplbench.plan.jobs import Job
from dplbench.plan.suites import Suite
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.results.status import StatusBook
from dplbench.run import launcher
from dplbench.run.failures import JobFailed, log_path
from dplbench.run.launcher import TrialEvent
from dplbench.run.leases import Leases
from dplbench.run.prepare import prepare
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.trials import job_summary, job_trial

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
    rerun_failed: list[Job] = field(default_factory=list)  # --resume: failed in an earlier run
    elsewhere: dict[str, str] = field(default_factory=dict)  # job id -> the driver running it
    status_file: str | None = None

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status != "done"]


def completed_job_ids(results_root: str) -> set[str]:
    if not store.has_rows(results_root):
        return set()
    table = store.query(results_root, "SELECT DISTINCT job_id FROM rows")
    return set(table.column("job_id").to_pylist())


def failed_job_ids(results_root: str) -> set[str]:
    """Jobs whose newest recorded state is failed (or stopped)."""
    if not store.has_rows(results_root, "status"):
        return set()
    table = store.query(
        results_root, "SELECT job_id FROM status WHERE status IN ('failed', 'stopped')"
    )
    return set(table.column("job_id").to_pylist())


def run_jobs(
    jobs: list[Job], settings: RunSettings, opts: ExecOptions, on_event: TrialEvent | None = None
) -> list[JobOutcome]:
    """Run jobs (one phase: no job here depends on another here), fused in groups of at most
    `opts.fuse` where they can be (plan/fusion.py); returns each job's outcome."""
    if not jobs:
        return []
    emit = on_event or (lambda *a: None)
    units, _ = fused_groups(jobs, opts.fuse)
    if not opts.use_ray:
        return [o for u in units for o in _run_local(members(u), settings, emit, opts.resume)]
    groups = {u.key: u.jobs for u in units if isinstance(u, FusedGroup)}
    ends = launcher.launch(
        job_trial,
        {u.key if isinstance(u, FusedGroup) else u.id: list(members(u)) for u in units},
        settings,
        opts,
        fan_out(groups, emit),
        plain=opts.plain_trials and all(j.workers == 1 for j in jobs),
    )
    by_id = {j.id: j for j in jobs}
    outcomes = []
    for e in ends:
        per_job = e.members or {}
        for job in groups.get(e.key, (by_id.get(e.key),)):
            status, error = e.status, e.error
            if job.id in per_job and e.status == "done":  # a member of a group that ran
                error = per_job[job.id].get("failed")
                status = "failed" if error else "done"
            if status != "done":
                error = _with_log(settings, job.id, error or "stopped")
            outcomes.append(JobOutcome(job, "done" if status == "done" else "failed", error))
    return outcomes


def fan_out(groups: dict[str, tuple[Job, ...]], emit: TrialEvent) -> TrialEvent:
    """A fused group's trial events as its members' own: each starts with the group, reports
    its own epochs, and ends as it ended (its own failure, or the group's)."""

    def event(key: str, state: str, info: dict) -> None:
        group = groups.get(key)
        if group is None:
            emit(key, state, info)
        elif state == "running":
            for j in group:
                emit(j.id, "running", {})
        elif state == "result":
            if info.get("job_id"):
                emit(info["job_id"], "result", info)
        else:
            ended = (info.get("last") or {}).get("members") or {}
            for j in group:
                mine = ended.get(j.id)
                if mine is None:  # the group ended before this member did
                    emit(j.id, "failed" if state == "done" else state, info)
                elif mine.get("failed"):
                    emit(j.id, "failed", {"error": mine["failed"], "last": mine})
                else:
                    emit(j.id, "done", {"last": mine})

    return event


def _with_log(settings: RunSettings, job_id: str, error: str) -> str:
    """A failure that never reached the worker's own handler (a worker group that could not
    start, a worker killed more often than allowed) still gets a log file and its path."""
    if "(log: " in error:
        return error
    path = log_path(settings.results, job_id, settings.run_id)
    if not storage.exists(path):
        storage.write(path, f"job {job_id} failed on the cluster:\n{error}\n")
    return f"{error} (log: {path})"


def _run_local(
    jobs: tuple[Job, ...], settings: RunSettings, emit: TrialEvent, resume: bool
) -> list[JobOutcome]:
    """A job, or a fused group, in this process (--no-ray)."""
    from dplbench.run.context import LocalContext
    from dplbench.run.fused_loop import run_group
    from dplbench.run.worker import run_job

    root = ResultsRoot(settings.results)
    contexts = []
    for job in jobs:
        emit(job.id, "running", {})
        name = root.resume_run(job.id, settings.run_id, resume)
        report = lambda m, job=job: emit(job.id, "result", m)  # noqa: E731
        contexts.append(LocalContext(settings.results, job.id, name, also_report=report))
    if len(jobs) > 1:
        ended = run_group(list(jobs), settings, contexts)
    else:
        try:
            ended = {jobs[0].id: run_job(jobs[0], settings, contexts[0])}
        except JobFailed as e:  # a failed job is recorded; the others go on
            ended = {jobs[0].id: e}
    outcomes = []
    for job in jobs:
        result = ended[job.id]
        if isinstance(result, JobFailed):
            log.debug("job %s failed", job.id, exc_info=result)
            emit(job.id, "failed", {"error": str(result)})
            outcomes.append(JobOutcome(job, "failed", str(result)))
        else:
            emit(job.id, "done", {"last": job_summary(result)})
            outcomes.append(JobOutcome(job, "done"))
    return outcomes


def _recording(book: StatusBook, leases: Leases, on_event: TrialEvent | None) -> TrialEvent:
    """Trial events -> the status table (and the job's lease, released when it ends), then the
    caller's sink (the live table)."""

    def event(key: str, state: str, info: dict) -> None:
        if state in ("done", "failed", "stopped"):
            leases.release(key)
        last = info.get("last") or {}
        if state == "result":
            book.update(key, attempts=info.get("attempt"))
        elif state == "running":
            book.update(key, status="running")
        else:
            error = info.get("error")
            book.update(key, status=state, error=error, log=_log_of(error), node=last.get("node"))
        if on_event is not None:
            on_event(key, state, info)

    return event


def run_suite(
    suite: Suite, settings: RunSettings, opts: ExecOptions, on_event: TrialEvent | None = None
) -> RunSummary:
    settings = replace(settings, suite=suite.name)
    summary = RunSummary(suite.name, settings.run_id)
    jobs = list(suite.jobs)
    if opts.resume:
        done, failed = completed_job_ids(settings.results), failed_job_ids(settings.results)
        summary.skipped = [j for j in jobs if j.id in done]
        jobs = [j for j in jobs if j.id not in done]
        summary.rerun_failed = [j for j in jobs if j.id in failed]
    prepare(jobs, settings.data, suite.data.synthesize)
    book = StatusBook(settings.results, suite.name, settings.run_id, jobs)
    summary.status_file = book.path
    leases = Leases(settings.results, settings.run_id, opts.lease_timeout)
    event = _recording(book, leases, on_event)
    try:
        pending = jobs
        while pending:
            pending = _run_phases(pending, settings, opts, leases, event, summary)
            if pending:  # --on-lease wait: held by another driver when we got to them
                time.sleep(min(5.0, opts.lease_timeout / 10))
                done = completed_job_ids(settings.results)
                summary.skipped += [j for j in pending if j.id in done]
                pending = [j for j in pending if j.id not in done]
    finally:
        leases.release_all()
    # The final word of each job, whatever the callbacks saw (a trial that never started).
    for o in summary.outcomes:
        book.update(o.job.id, status=o.status, error=o.error, log=_log_of(o.error))
    return summary


def _run_phases(jobs, settings, opts, leases, event, summary) -> list[Job]:
    """Training jobs, then the evaluation jobs of those that trained; each job only once its
    lease is ours. Returns the jobs another driver holds, when the caller waits for them."""
    waiting = []
    for phase in ([j for j in jobs if j.source is None], [j for j in jobs if j.source]):
        failed = {o.job.id for o in summary.outcomes if o.status != "done"}
        runnable = []
        for j in phase:
            if j.source in summary.elsewhere:  # its training job runs in another driver
                summary.elsewhere[j.id] = summary.elsewhere[j.source]
                event(j.id, "stopped", {"error": f"its training job {j.source} runs elsewhere"})
                continue
            if j.source in {w.id for w in waiting}:
                waiting.append(j)
                continue
            if j.source in failed:
                error = f"its training job {j.source} failed"
                summary.outcomes.append(JobOutcome(j, "failed", error))
                event(j.id, "failed", {"error": error})
                continue
            holder = leases.acquire(j.id)
            if holder is None:
                runnable.append(j)
            elif opts.on_lease == "wait":
                waiting.append(j)
            else:
                summary.elsewhere[j.id] = holder.describe()
                event(
                    j.id, "stopped", {"error": f"running in another driver ({holder.describe()})"}
                )
        summary.outcomes += run_jobs(runnable, settings, opts, event)
    return waiting


def _log_of(error: str | None) -> str | None:
    """The log path a failure line ends with: "... (log: PATH)"."""
    if not error or "(log: " not in error:
        return None
    return error.rsplit("(log: ", 1)[1].rstrip(")")
