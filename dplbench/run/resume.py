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


def completed_runs(root: ResultsRoot) -> dict[str, str]:
    """job id -> the run whose result rows readers take (the newest: results/store.py)."""
    if not store.has_rows(root):
        return {}
    table = store.query(root, "SELECT DISTINCT job_id, run_id FROM results")
    return dict(zip(table.column("job_id").to_pylist(), table.column("run_id").to_pylist()))


def ended_job_states(root: ResultsRoot) -> dict[str, str]:
    """job id -> 'failed' or 'stopped': jobs whose newest recorded state is one of these."""
    if not store.has_rows(root, "status"):
        return {}
    table = store.query(
        root, "SELECT job_id, status FROM status WHERE status IN ('failed', 'stopped')"
    )
    return dict(zip(table.column("job_id").to_pylist(), table.column("status").to_pylist()))


def skipped_runs(plan: Plan, root: ResultsRoot) -> dict[str, str]:
    """The plan's jobs that --resume skips (module docstring) -> the run whose rows they keep
    (a sweep's: the trial's record, "" when the trial's jobs wrote no rows)."""
    runs = completed_runs(root)
    if plan.sweep is None:
        return {j.id: runs[j.id] for j in plan.jobs if j.id in runs}
    from dplbench.results.sweeps import kept_trials

    kept = kept_trials(root, plan.sweep.name)
    return {j.id: runs.get(j.id, "") for t in plan.sweep.trials if t.key in kept for j in t.jobs}


def skipped_ids(plan: Plan, root: ResultsRoot) -> set[str]:
    """The ids of the plan's jobs that --resume skips (module docstring)."""
    return set(skipped_runs(plan, root))
