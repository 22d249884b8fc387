"""`Plan`: what a command will run, in one shape for `run`, `tune` and `ablate`.

A plan holds its jobs, the suite their rows are filed under, and the data section of its suite;
a sweep's plan also holds its settings (`sweep`: each setting a trial of jobs) and an ablation's
its variants (`ablation`). What runs as one Tune trial, its *units* (a job, a fused group, a sweep
setting's jobs), is computed from a plan by plan/units.py, for a dry run and for the run alike.
What follows the units (a sweep's summary, an ablation's table) is the plan's finishing step
(run/finish.py), chosen by `kind`.

    from dplbench.plan import plan_of
    plan = plan_of(LaunchRequest.of(suite="smoke"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dplbench.plan.jobs import Job

if TYPE_CHECKING:
    from dplbench.plan.ablations import Ablation
    from dplbench.plan.sweeps import Sweep

KINDS = ("suite", "sweep", "ablation")


@dataclass(frozen=True)
class SuiteData:
    synthesize: bool = False  # make the synthetic benchmark when missing (the smoke suite)


@dataclass(frozen=True)
class Plan:
    name: str  # the suite's name; a sweep's own name
    jobs: tuple[Job, ...]
    data: SuiteData = field(default_factory=SuiteData)
    sweep: Sweep | None = None  # `tune`: its settings, each a trial of jobs
    ablation: Ablation | None = None  # `ablate`: the ablation its variants' jobs belong to
    suite_name: str | None = None  # where rows are filed, when not `name` (a sweep's suite)

    @property
    def kind(self) -> str:
        if self.sweep is not None:
            return "sweep"
        return "ablation" if self.ablation is not None else "suite"

    @property
    def suite(self) -> str:
        """The suite the jobs' rows, epochs and status are filed under."""
        return self.suite_name or self.name
