"""What the driver hears while a plan runs, typed and frozen: from the workers (a job started,
finished an epoch, ended) and from the driver's own bookkeeping (the plan was checked; a sweep
trial progressed or ended). Sinks take one event: the live tables, the status record, the
tracker, a sweep's trial records. How these cross Ray Tune's flat metric dicts is
run/tune_io.py, the one module that knows Tune's side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# How a job or a trial ends ("not started": a stop was asked for before it could start).
ENDED = ("done", "failed", "stopped", "not started")


@dataclass(frozen=True)
class PlanChecked:
    """Before anything runs: how the plan was checked and cut into units (run/preflight.py)."""

    name: str
    checks: Any  # run/preflight.py Preflight


@dataclass(frozen=True)
class JobStarted:
    job_id: str


@dataclass(frozen=True)
class EpochDone:
    """One epoch of one job: loss (and its terms as loss_*), lr, samples, seconds, attempt, and
    val_accuracy / test_* when they were scored."""

    job_id: str
    epoch: int  # 0-based
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> float | None:
        return self.metrics.get("loss")

    @property
    def attempt(self) -> int | None:
        return self.metrics.get("attempt")


@dataclass(frozen=True)
class JobEnded:
    job_id: str
    status: str  # done | failed | stopped | not started (run/interrupt.py)
    error: str | None = None  # one line (what failed, where, how to fix; its log)
    accuracy: Mapping[str, float] = field(default_factory=dict)  # evaluated subsample -> %
    node: str | None = None  # where it ran


def job_ended(job_id: str, rows: list[Mapping[str, Any]]) -> JobEnded:
    """A finished job from its result rows: its accuracy per evaluated subsample, where it ran."""
    return JobEnded(
        job_id,
        "done",
        accuracy={r["subsample"]: r["accuracy"] for r in rows},
        node=rows[0]["node"] if rows else None,
    )


@dataclass(frozen=True)
class TrialStarted:
    trial: str


@dataclass(frozen=True)
class TrialProgress:
    """A sweep trial after `epoch` epochs of every job: its validation objective so far."""

    trial: str
    epoch: int  # epochs done (1-based)
    objective: float | None
    val: Mapping[str, float | None] = field(default_factory=dict)  # job id -> val accuracy


@dataclass(frozen=True)
class TrialEnded:
    trial: str
    status: str  # done | failed | stopped
    error: str | None = None
    result: Any = None  # results/sweeps.py TrialResult: objective, validation and test metrics


@dataclass(frozen=True)
class StopAsked:
    """Ctrl-C or SIGTERM (run/interrupt.py): the run stops; a second signal ends it at once."""

    signal: str


Event = (
    PlanChecked | JobStarted | EpochDone | JobEnded | TrialStarted | TrialProgress | TrialEnded
    | StopAsked
)  # fmt: skip
Sink = Callable[[Event], None]


def fan(*sinks: Sink | None) -> Sink:
    """One sink feeding several (None: left out), in order."""
    live = [s for s in sinks if s is not None]

    def sink(event: Event) -> None:
        for s in live:
            s(event)

    return sink
