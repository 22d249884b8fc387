"""Running a plan: its units (plan/units.py) on Ray (run/launcher.py) or in this process
(--no-ray), training units first, then the evaluation jobs that load their checkpoints (xd, dg).

What `--resume` skips (run/resume.py) and which jobs another driver holds (run/leases.py) go into
the same `plan_units` the dry run calls, so the units that run are the units it printed. Every
job ends in one `JobEnded` event; a suite's driver records them in the status table
(results/status.py) and releases the job's lease, a sweep's turns them into its trials' records
(run/sweep.py). The outcome is one `UnitOutcome` per unit that ran.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from dplbench import storage
from dplbench.plan.jobs import Job
from dplbench.plan.plan import Plan
from dplbench.plan.units import Unit, Units, plan_units
from dplbench.results.status import StatusBook
from dplbench.run import interrupt
from dplbench.run.events import EpochDone, Event, JobEnded, JobStarted, Sink, fan
from dplbench.run.failures import JobFailed, JobStopped, log_line
from dplbench.run.leases import Leases
from dplbench.run.prepare import prepare
from dplbench.run.resume import ended_job_states, skipped_ids, skipped_runs
from dplbench.run.settings import ExecOptions, RunSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    job: Job
    # done | failed | stopped (interrupted, or a sweep trial ASHA stopped) | not started
    # (interrupted before it could)
    status: str
    error: str | None = None


@dataclass(frozen=True)
class UnitOutcome:
    unit: Unit
    jobs: tuple[JobOutcome, ...]


@dataclass
class RunSummary:
    name: str
    run_id: str
    units: list[UnitOutcome] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)  # --resume: rows (or records) already there
    rerun_failed: list[Job] = field(default_factory=list)  # --resume: failed in an earlier run
    rerun_stopped: list[Job] = field(default_factory=list)  # --resume: interrupted earlier
    elsewhere: dict[str, str] = field(default_factory=dict)  # job id -> the driver running it
    status_file: str | None = None
    interrupted: str | None = None  # the signal that stopped the run (run/interrupt.py)

    @property
    def outcomes(self) -> list[JobOutcome]:
        return [o for u in self.units for o in u.jobs]

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


class Driver:
    """A suite's or an ablation's run (a sweep's: run/sweep.py `SweepDriver`)."""

    # A job that ends stopped (its trial ended without finishing it) counts as failed here; in a
    # sweep it is a trial ASHA stopped.
    stopped_is_failure = True

    def __init__(self, plan: Plan, settings: RunSettings, opts: ExecOptions, sink: Sink | None):
        self.plan, self.opts = plan, opts
        self.settings = replace(settings, suite=plan.suite)
        self.root = self.settings.root
        self.summary = RunSummary(plan.name, self.settings.run_id)
        self.ended: dict[str, JobEnded] = {}
        self.user_sink = sink
        self.book: StatusBook | None = None
        self.leases: Leases | None = None

    # ---- what differs by kind ----------------------------------------------------------------

    def open(self, pending: list[Job]) -> None:
        """Before the units run: the status table and the leases of this run's jobs."""
        self.book = StatusBook(self.root, self.plan.suite, self.settings.run_id, pending)
        self.summary.status_file = self.book.path
        self.leases = Leases(self.root, self.settings.run_id, self.opts.lease_timeout)

    def close(self) -> None:
        if self.leases is not None:
            self.leases.release_all()
        if self.book is not None:  # the final word of each job, whatever the events said
            for o in self.summary.outcomes:
                self.book.update(o.job.id, status=o.status, error=o.error, log=log_line(o.error))
            self.book.close()

    def take(self, jobs: list[Job]) -> dict[str, str]:
        """Take the leases of `jobs`; returns those another driver holds (job id -> who)."""
        out = {}
        for j in jobs:
            holder = self.leases.acquire(j.id)
            if holder is not None:
                out[j.id] = holder.describe()
        return out

    def sink(self) -> Sink:
        return fan(self.record, self.user_sink)

    def launch_units(self, units: list[Unit], sink: Sink) -> None:
        from dplbench.run import launcher

        launcher.launch(units, self.settings, self.opts, sink)

    # ---- the run -------------------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Every job event: the status table, the job's lease, its outcome."""
        if isinstance(event, JobStarted) and self.book is not None:
            self.book.update(event.job_id, status="running")
        elif isinstance(event, EpochDone) and self.book is not None:
            self.book.update(event.job_id, attempts=event.attempt)
        elif isinstance(event, JobEnded):
            if interrupt.requested() and event.status == "stopped" and event.error is None:
                event = replace(event, error="interrupted")
            failed = event.status == "failed" or (
                event.status == "stopped" and self.stopped_is_failure and event.error is None
            )
            if failed:
                event = replace(event, error=self._with_log(event.job_id, event.error))
            self.ended[event.job_id] = event
            if self.leases is not None:
                self.leases.release(event.job_id)
            if self.book is not None:
                self.book.update(event.job_id, status=event.status, error=event.error,
                                 log=log_line(event.error), node=event.node)  # fmt: skip

    def _with_log(self, job_id: str, error: str | None) -> str:
        """A failure that never reached the worker's own handler (a worker group that could not
        start, a worker killed more often than allowed) still gets a log file and its path."""
        error = error or "stopped"
        if "(log: " in error:
            return error
        path = self.root.log(job_id, self.settings.run_id)
        if not storage.exists(path):
            storage.write(path, f"job {job_id} failed on the cluster:\n{error}\n")
        return f"{error} (log: {path})"

    def run(self) -> RunSummary:
        plan, opts, summary = self.plan, self.opts, self.summary
        done = skipped_runs(plan, self.root) if opts.resume else {}
        summary.skipped = [j for j in plan.jobs if j.id in done]
        pending = [j for j in plan.jobs if j.id not in done]
        if opts.resume:
            ended = ended_job_states(self.root)
            summary.rerun_failed = [j for j in pending if ended.get(j.id) == "failed"]
            summary.rerun_stopped = [j for j in pending if ended.get(j.id) == "stopped"]
        prepare(pending, self.settings.data, plan.data.synthesize, plan.sweep is not None)
        self.open(pending)
        sink = self.sink()
        try:
            attempted = set(done)
            while True:
                candidates = [j for j in plan.jobs if j.id not in attempted]
                held = self.take(candidates) if self.leases is not None else {}
                units = plan_units(plan, opts.fuse, attempted, held)
                self.run_round(units, held, sink)
                attempted |= {j.id for j in units.jobs}
                waiting = [j for j in units.held if opts.on_lease == "wait"]
                if not waiting or interrupt.requested():
                    break
                time.sleep(min(5.0, opts.lease_timeout / 10))
                finished = skipped_ids(plan, self.root) - attempted  # done by the other driver
                summary.skipped += [j for j in plan.jobs if j.id in finished]
                attempted |= finished
        finally:
            summary.interrupted = interrupt.signal_name()
            self.close()
        return summary

    def run_round(self, units: Units, held: dict[str, str], sink: Sink) -> None:
        """One pass: the training units, then the evaluation units whose training succeeded;
        jobs another driver holds are said to be stopped (unless we wait for them)."""
        if self.opts.on_lease != "wait":
            for j in units.held:
                holder = held.get(j.id) or self.summary.elsewhere.get(j.source or "")
                self.summary.elsewhere[j.id] = holder or "another driver"
                why = (f"its training job {j.source} runs elsewhere" if j.id not in held
                       else f"running in another driver ({holder})")  # fmt: skip
                sink(JobEnded(j.id, "stopped", why))
                self.ended.pop(j.id, None)  # said, not run here: no outcome of this run
        self.run_units(list(units.train), sink)
        failed = {o.job.id for o in self.summary.outcomes if o.status != "done"}
        runnable = []
        for u in units.evaluate:
            (job,) = u.jobs
            if job.source in failed:
                error = f"its training job {job.source} failed"
                sink(JobEnded(job.id, "failed", error))
                self.summary.units.append(UnitOutcome(u, (JobOutcome(job, "failed", error),)))
            else:
                runnable.append(u)
        self.run_units(runnable, sink)

    def run_units(self, units: list[Unit], sink: Sink) -> None:
        if not units:
            return
        if self.opts.use_ray and not interrupt.requested():
            self.launch_units(units, sink)
        else:
            for u in units:
                if interrupt.requested():  # no unit starts after a stop was asked for
                    for j in u.jobs:
                        sink(JobEnded(j.id, "not started"))
                else:
                    run_local(u, self.settings, sink)
        for u in units:
            self.summary.units.append(UnitOutcome(u, tuple(self.outcome(j) for j in u.jobs)))

    def outcome(self, job: Job) -> JobOutcome:
        stopping = interrupt.requested()
        missing = (
            JobEnded(job.id, "not started") if stopping else JobEnded(job.id, "failed", "never ran")
        )
        ended = self.ended.get(job.id) or missing
        status = ended.status
        if status == "stopped" and self.stopped_is_failure and ended.error != "interrupted":
            status = "failed"
        quiet = ("done", "not started")
        return JobOutcome(job, status, ended.error or (None if status in quiet else "stopped"))


def run_local(unit: Unit, settings: RunSettings, sink: Sink) -> None:
    """A unit in this process (--no-ray): a job, a fused group, or a sweep setting's jobs one
    after another."""
    from dplbench.run.context import LocalContext
    from dplbench.run.events import job_ended
    from dplbench.run.worker import run_group, run_job

    resume = settings.policy.resume
    contexts = []
    for job in unit.jobs:
        sink(JobStarted(job.id))
        name = settings.root.resume_run(job.id, settings.run_id, resume)
        contexts.append(LocalContext(settings.root, job.id, name, on_epoch=sink))
    if unit.fused:
        ended = run_group(list(unit.jobs), settings, contexts)
    else:
        ended = {}
        for job, ctx in zip(unit.jobs, contexts):
            try:
                ended[job.id] = run_job(job, settings, ctx)
            except JobFailed as e:  # a failed job is recorded; the others go on
                ended[job.id] = e
            if interrupt.requested():  # the unit's jobs after the one it stopped: not started
                break
    for job in unit.jobs:
        result = ended.get(job.id)
        if result is None:
            sink(JobEnded(job.id, "not started"))
        elif isinstance(result, JobStopped):
            sink(JobEnded(job.id, "stopped", "interrupted"))
        elif isinstance(result, JobFailed):
            log.debug("job %s failed", job.id, exc_info=result)
            sink(JobEnded(job.id, "failed", str(result)))
        else:
            sink(job_ended(job.id, result))


def run_plan(
    plan: Plan, settings: RunSettings, opts: ExecOptions, sink: Sink | None = None
) -> RunSummary:
    """Run (or resume) a plan's units; see the module docstring."""
    from dplbench.run.sweep import SweepDriver

    drivers = {"suite": Driver, "ablation": Driver, "sweep": SweepDriver}
    return drivers[plan.kind](plan, settings, opts, sink).run()
