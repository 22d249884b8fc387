"""`dplbench tune`: a sweep's units on Ray, each trial recorded the moment it ends.

A sweep's units are its settings (one Tune trial each, stopped together by ASHA), or under FIFO
with `--fuse K` its jobs in fused groups across seeds and settings (plan/units.py). Either way the
jobs' events come back the same (run/events.py), and `TrialRecorder` turns them into the trials'
events and records: a trial starts with its first job, progresses when all its jobs have
finished an epoch (or when its own trial says so), and ends with its last job; its result comes
from its jobs' rows and epoch rows (results/sweeps.py `trial_result`, one function for both
paths). Records need no driver state: `--resume` reruns the same command and skips trials
recorded `done` or `stopped`; failed and unfinished ones run again, their jobs from their last
checkpoint. We do not use `Tuner.restore`: our own records survive a killed driver, and settings
are generated deterministically (seeded draws), so the same command yields the same trial keys.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dplbench.plan.plan import Plan
from dplbench.plan.units import Unit
from dplbench.results import sweeps as records
from dplbench.results.sweeps import objective
from dplbench.run.driver import Driver
from dplbench.run.events import (
    EpochDone,
    Event,
    JobEnded,
    JobStarted,
    Sink,
    TrialEnded,
    TrialProgress,
    TrialStarted,
    fan,
)
from dplbench.run.settings import ExecOptions, RunSettings


def scheduler_of(plan: Plan) -> Any:
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    sweep = plan.sweep
    if sweep.scheduler != "asha":
        return FIFOScheduler()
    # stop_last_trials=False: at max_t ASHA would otherwise stop a trial before its final report
    # (test metrics); our epochs end there anyway.
    epochs = max(j.epochs for j in plan.jobs)
    return AsyncHyperBandScheduler(
        time_attr="epoch",
        metric="objective",
        mode="max",
        grace_period=sweep.grace_period,
        max_t=max(epochs, sweep.grace_period + 1),
        reduction_factor=sweep.reduction_factor,
        stop_last_trials=False,
    )


class TrialRecorder:
    """Job events of a sweep's units -> its trials' events and records (module docstring)."""

    def __init__(self, plan: Plan, settings: RunSettings, sink: Sink | None) -> None:
        self.sweep, self.settings, self.sink = plan.sweep, settings, sink
        self.trial_of = {j.id: t for t in plan.sweep.trials for j in t.jobs}
        self.started: set[str] = set()
        self.epochs: dict[str, dict[str, int]] = {t.key: {} for t in plan.sweep.trials}
        self.vals: dict[str, dict[str, float | None]] = {t.key: {} for t in plan.sweep.trials}
        self.ended: dict[str, dict[str, JobEnded]] = {t.key: {} for t in plan.sweep.trials}
        self.last: dict[str, TrialProgress] = {}

    def _emit(self, event: Event) -> None:
        if self.sink is not None:
            self.sink(event)

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrialProgress):  # a setting's own trial says how far it is
            self.last[event.trial] = event
            self._emit(event)
            return
        trial = self.trial_of.get(getattr(event, "job_id", None))
        if trial is None:
            return
        if isinstance(event, JobStarted) and trial.key not in self.started:
            self.started.add(trial.key)
            self._emit(TrialStarted(trial.key))
        elif isinstance(event, EpochDone):
            self._epoch(trial, event)
        elif isinstance(event, JobEnded):
            self.ended[trial.key][event.job_id] = event
            if len(self.ended[trial.key]) == len(trial.jobs):
                self._end(trial)

    def _epoch(self, trial: Any, event: EpochDone) -> None:
        """A job of a fused group finished an epoch: the trial is as far as its slowest job."""
        epochs, vals = self.epochs[trial.key], self.vals[trial.key]
        epochs[event.job_id] = event.epoch + 1
        vals[event.job_id] = event.metrics.get("val_accuracy")
        if len(epochs) == len(trial.jobs):
            epoch = min(epochs.values())
            last = self.last.get(trial.key)
            if last is None or epoch > last.epoch:
                self(TrialProgress(trial.key, epoch, objective(vals, trial.jobs), dict(vals)))

    def _end(self, trial: Any) -> None:
        ended = self.ended[trial.key].values()
        failed = [e for e in ended if e.status == "failed"]
        stopped = any(e.status == "stopped" for e in ended)
        status = "failed" if failed else "stopped" if stopped else "done"
        error = failed[0].error if failed else None
        result = records.trial_result(trial, self.settings.root, self.last.get(trial.key))
        rows = records.trial_rows(
            self.sweep.name, self.settings.run_id, trial, status, result, error
        )
        records.write_trial(self.settings.root, self.sweep.name, self.settings.run_id, rows)
        self._emit(TrialEnded(trial.key, status, error, result))


class SweepDriver(Driver):
    """A sweep's run: its trials' records instead of the status table, no leases, validation
    after every epoch."""

    stopped_is_failure = False

    def __init__(self, plan: Plan, settings: RunSettings, opts: ExecOptions, sink: Sink | None):
        super().__init__(plan, replace(settings, val_each_epoch=True), opts, sink)

    def open(self, pending) -> None:
        records.write_description(self.plan.sweep, self.root.sweep_files(self.plan.sweep.name))

    def close(self) -> None:
        pass

    def sink(self) -> Sink:
        return fan(self.record, TrialRecorder(self.plan, self.settings, self.user_sink))

    def launch_units(self, units: list[Unit], sink: Sink) -> None:
        from dplbench.run import launcher

        if units[0].kind != "setting":  # fused groups and jobs, as a suite runs them
            launcher.launch(units, self.settings, self.opts, sink, sweep=self.plan.sweep.name)
            return
        # No Train restarts for settings: when Tune kills a stopped trial, its controller would
        # otherwise see the dead workers and create a new placement group just before dying too
        # (leaked, never announced). A failed trial is recorded; --resume reruns it.
        opts = replace(self.opts, max_failures=0)
        scheduler = scheduler_of(self.plan)
        launcher.launch(units, self.settings, opts, sink, scheduler, sweep=self.plan.sweep.name)
