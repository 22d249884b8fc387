"""What `--resume` skips, read from the results root: the dry run and the run ask the same
questions here, so both cut the plan into the same units (plan/units.py).

A suite's (or an ablation's) job is skipped when it has result rows; a sweep's trial when its
record says done or stopped (results/sweeps.py), and then all of its jobs. Failed and unfinished
work runs again, each job from its last checkpoint.
"""

from __future__ import annotations

from dplbench.plan.plan import Plan
from dplbench.results import store
from dplbench.results.root import ResultsRoot


def completed_job_ids(root: ResultsRoot) -> set[str]:
    if not store.has_rows(root):
        return set()
    table = store.query(root, "SELECT DISTINCT job_id FROM rows")
    return set(table.column("job_id").to_pylist())


def failed_job_ids(root: ResultsRoot) -> set[str]:
    """Jobs whose newest recorded state is failed (or stopped)."""
    if not store.has_rows(root, "status"):
        return set()
    table = store.query(root, "SELECT job_id FROM status WHERE status IN ('failed', 'stopped')")
    return set(table.column("job_id").to_pylist())


def skipped_ids(plan: Plan, root: ResultsRoot) -> set[str]:
    """The ids of the plan's jobs that --resume skips (module docstring)."""
    if plan.sweep is None:
        return completed_job_ids(root) & {j.id for j in plan.jobs}
    from dplbench.results.sweeps import kept_trials

    kept = kept_trials(root, plan.sweep.name)
    return {j.id for t in plan.sweep.trials if t.key in kept for j in t.jobs}
