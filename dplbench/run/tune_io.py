"""The Tune boundary: typed events (run/events.py) to and from Ray Tune's flat result dicts.

Inside a trial every report is one event: `report(event)` (a plain trial, a fused group, a sweep
setting) or `train_report(event)` (a Ray Train worker, whose reports Train forwards to Tune). A
trial that completes its unit says so last (`report_unit_end`). On the driver, `TrialCallback`
turns Tune's trial callbacks back into events for one sink, and makes sure each job of each unit
ends exactly once: a trial that completed without a job's own end, was stopped by the scheduler,
failed, or never ran ends its remaining jobs accordingly. No other module reads Tune's results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ray.tune as tune

from dplbench.run.events import (
    EpochDone,
    Event,
    JobEnded,
    JobStarted,
    Sink,
    TrialProgress,
)

log = logging.getLogger(__name__)

# The key every report carries and its values; ASHA reads "epoch" and "objective" of "trial"s.
KIND = "event"
EPOCH, JOB_END, TRIAL, UNIT_END = "epoch", "job_end", "trial", "unit_end"


def encode(event: Event) -> dict[str, Any]:
    if isinstance(event, EpochDone):
        return {KIND: EPOCH, **event.metrics, "job_id": event.job_id, "epoch": event.epoch}
    if isinstance(event, JobEnded):
        return {KIND: JOB_END, "job_id": event.job_id, "status": event.status,
                "error": event.error, "accuracy": dict(event.accuracy), "node": event.node}  # fmt: skip
    if isinstance(event, TrialProgress):
        out = {KIND: TRIAL, "trial": event.trial, "epoch": event.epoch, "val": dict(event.val)}
        if event.objective is not None:  # ASHA compares it: only real values
            out["objective"] = event.objective
        return out
    raise TypeError(f"{type(event).__name__} does not cross the Tune boundary")


def decode(result: dict[str, Any]) -> Event | None:
    """The event a trial reported (None: Tune's own bookkeeping or the unit's end)."""
    kind = result.get(KIND)
    if kind == EPOCH:
        metrics = {k: v for k, v in result.items() if k not in _TUNE_KEYS and k != KIND}
        return EpochDone(metrics.pop("job_id"), int(metrics.pop("epoch")), metrics)
    if kind == JOB_END:
        return JobEnded(result["job_id"], result["status"], result.get("error"),
                        result.get("accuracy") or {}, result.get("node"))  # fmt: skip
    if kind == TRIAL:
        return TrialProgress(
            result["trial"], int(result["epoch"]), result.get("objective"), result.get("val") or {}
        )
    return None


# What Tune adds to every result (ray.tune.result); never one of our metrics.
_TUNE_KEYS = {
    "done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s",
    "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
    "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint",
}  # fmt: skip


# ---- inside a trial -------------------------------------------------------------------------


def report(event: Event) -> None:
    """One event from a trial's own process (a plain job, a fused group, a sweep setting)."""
    tune.report(encode(event))


def train_report(event: Event) -> None:
    """One event from a Ray Train worker (Train passes it on to the trial)."""
    import ray.train

    ray.train.report(encode(event))


def report_unit_end() -> None:
    """The trial ran its unit to the end (each job has reported how it ended)."""
    tune.report({KIND: UNIT_END})


# ---- on the driver --------------------------------------------------------------------------


class TrialCallback(tune.Callback):
    """Tune's trial callbacks -> events, for the units launched (key -> their job ids).
    `on_end(key)` runs when a trial ends (placement-group cleanup). Tune may pickle its callbacks
    with the experiment state; the sink stays with the driver's own copy."""

    def __init__(
        self,
        units: dict[str, tuple[str, ...]],
        sink: Sink,
        on_end: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.units, self.sink, self.on_end = units, sink, on_end
        self.ended: set[str] = set()  # job ids that have ended
        self.started: set[str] = set()  # unit keys whose trial started

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "sink": None}

    def _emit(self, event: Event) -> None:
        if isinstance(event, JobEnded):
            if event.job_id in self.ended:
                return
            self.ended.add(event.job_id)
        if self.sink is not None:
            self.sink(event)

    def end_rest(self, key: str, status: str, error: str | None) -> None:
        """End every job of unit `key` that has not ended yet."""
        for job_id in self.units.get(key, ()):
            self._emit(JobEnded(job_id, status, error))

    @staticmethod
    def _key(trial: Any) -> str:
        return trial.config["spec"].key

    def on_trial_start(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.started.add(key)
        for job_id in self.units.get(key, ()):
            if job_id not in self.ended:
                self._emit(JobStarted(job_id))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        event = decode(result)
        if event is not None:
            self._emit(event)

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self._key(trial)
        completed = (trial.last_result or {}).get(KIND) == UNIT_END
        if self.on_end is not None:
            self.on_end(key, completed)
        # A unit run to its end reported each job's end; a trial without that was stopped (by
        # the scheduler, or by an interrupt: run/interrupt.py), or never started.
        if completed:
            self.end_rest(key, "failed", "its trial ended without its result")
        elif key not in self.started:
            self.end_rest(key, "not started", None)
        else:
            self.end_rest(key, "stopped", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._key(trial)
        if self.on_end is not None:
            self.on_end(key, False)
        self.end_rest(key, "failed", error_line(trial))

    def never_ran(self, keys: Iterable[str], interrupted: bool = False) -> None:
        """After the experiment: the jobs of units whose trial never started (`interrupted`:
        the run was stopped before they could), and of units whose trial an interrupt ended
        before it said how they ended."""
        for key in keys:
            if key not in self.started:
                self.end_rest(
                    key, *(("not started", None) if interrupted else ("failed", "never ran"))
                )
            elif interrupted:
                self.end_rest(key, "stopped", None)


def error_line(trial: Any) -> str:
    """The one line of a failed trial, from Tune's error file (our JobFailed line when there)."""
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
    except (OSError, TypeError):
        return "error"
    ours = [ln.split("JobFailed: ", 1)[1] for ln in lines if "JobFailed: " in ln]
    return (ours[-1] if ours else next((ln for ln in reversed(lines) if ln.strip()), "error"))[
        :1000
    ]
