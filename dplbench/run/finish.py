"""A plan's finishing step, once its units have run (by its kind; a suite has none): a sweep's
summary, objective plot and best setting (results/sweeps.py), an ablation's table
(results/ablations.py). Each reads the results root, so it also serves `ablate --table`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dplbench.plan.jobs import Job
from dplbench.plan.plan import Plan
from dplbench.results.root import ResultsRoot


@dataclass(frozen=True)
class AblationTable:
    text: str  # Markdown
    path: str  # where it was written


def sweep_outputs(plan: Plan, root: ResultsRoot, skipped: Sequence[Job] = ()):
    """The sweep's records and outputs (results/sweeps.py `SweepResult`)."""
    from dplbench.results import sweeps as records

    skipped_ids = {j.id for j in skipped}
    kept = [t.key for t in plan.sweep.trials if all(j.id in skipped_ids for j in t.jobs)]
    result = records.SweepResult(plan.sweep, records.read_trials(root, plan.sweep.name), kept)
    result.files = records.write_outputs(result, root.sweep_files(plan.sweep.name))
    return result


def ablation_table(plan: Plan, root: ResultsRoot, skipped: Sequence[Job] = ()) -> AblationTable:
    """The ablation's table from the rows under `root` (Markdown, and where it was written)."""
    from dplbench.results import ablations as tables

    ab, name = plan.ablation, plan.suite
    text = tables.ablation_markdown(ab, tables.ablation_table(ab, root, name), name)
    return AblationTable(text, tables.write_markdown(text, root, f"{ab.name}-{name}"))


FINISH = {"sweep": sweep_outputs, "ablation": ablation_table}
