"""A sweep's records and tables: the objective, per-trial Parquet records, the summary table,
the objective plot and the best configuration.

Where things land (results root R, sweep name S; results/root.py `SweepFiles`):
    R/sweeps/S/trials/<trial>-<run_id>.parquet   one row per (trial, job): status, objective, the
                                                 trial's parameters as columns, val and test metrics
    R/sweeps/S/summary.md, objective.png, best.txt, sweep.json
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

import pyarrow as pa

from dplbench import storage
from dplbench.plan.jobs import Job
from dplbench.plan.sweeps import Sweep, Trial, best_overrides
from dplbench.results import store
from dplbench.results.aggregate import harmonic_mean
from dplbench.results.markdown import fmt, md_table
from dplbench.results.root import ResultsRoot, SweepFiles

TERMINAL_KEEP = ("done", "stopped")  # statuses --resume keeps; failed trials run again


def objective(val_by_job: dict[str, float], jobs: Sequence[Job]) -> float | None:
    """HM over datasets of the seed-mean validation accuracy (see the module docstring)."""
    by_ds: dict[str, list[float]] = {}
    for j in jobs:
        if val_by_job.get(j.id) is not None:
            by_ds.setdefault(j.train.dataset, []).append(val_by_job[j.id])
    return harmonic_mean([sum(v) / len(v) for v in by_ds.values()]) if by_ds else None


def trial_test_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Test metrics of a trial's rows: base/novel means over datasets (seed-means first) and their
    HM (docs/protocols.md §2: HM of the averages), or the mean accuracy for all-class protocols."""
    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r.get("split", "test") == "test":
            acc.setdefault((r["subsample"], r["dataset"]), []).append(r["accuracy"])

    def mean_over(sub: str) -> float | None:
        per_ds = [sum(v) / len(v) for (s, _), v in acc.items() if s == sub]
        return sum(per_ds) / len(per_ds) if per_ds else None

    base, novel, everything = mean_over("base"), mean_over("novel"), mean_over("all")
    hm = harmonic_mean([base, novel])
    return {"test_base": base, "test_novel": novel, "test_hm": hm, "test_accuracy": everything}


# ---- a trial's result, and its records -----------------------------------------------------


@dataclass(frozen=True)
class TrialResult:
    """What a trial is recorded with: epochs every job finished, the validation objective and
    accuracies, the test metrics (per job, and of the trial: base / novel means over datasets and
    their HM, or the mean accuracy)."""

    epoch: int
    objective: float | None
    val: dict[str, float | None]  # job id -> its last validation accuracy
    tests: dict[str, dict[str, float | None]] = field(default_factory=dict)  # job id -> metrics
    test: dict[str, float | None] = field(default_factory=dict)  # trial_test_metrics


def trial_result(trial: Trial, root: ResultsRoot, last: Any = None) -> TrialResult:
    """A trial's result from its jobs' rows and epoch rows: the last epoch's validation
    accuracies (of the run that trained it, for a job resumed after it), their objective, the
    test metrics. One function for every path (a setting run as one trial, its jobs in fused
    groups). `last` (run/events.py TrialProgress, the trial's last report) stands in for jobs
    with no epoch rows: a trial stopped by ASHA is killed before its jobs write theirs."""
    ids = {"ids": [j.id for j in trial.jobs]}
    rows = store.query(
        root, "SELECT * FROM results WHERE list_contains($ids, job_id)", ids
    ).to_pylist()
    last_val = store.query(
        root,
        "SELECT job_id, arg_max(val_accuracy, epoch) AS val, max(epoch) + 1 AS epochs "
        "FROM epochs WHERE list_contains($ids, job_id) AND val_accuracy IS NOT NULL "
        "GROUP BY job_id",
        ids,
    ).to_pylist()
    recorded = {r["job_id"]: r for r in last_val}
    reported = dict(last.val) if last is not None else {}
    vals = {j.id: recorded[j.id]["val"] if j.id in recorded else reported.get(j.id)
            for j in trial.jobs}  # fmt: skip
    fallback = last.epoch if last is not None else 0
    epoch = min(recorded[j.id]["epochs"] if j.id in recorded else fallback for j in trial.jobs)
    mine = {j.id: [r for r in rows if r["job_id"] == j.id] for j in trial.jobs}
    return TrialResult(
        epoch=epoch,
        objective=objective(vals, trial.jobs),
        val=vals,
        tests={jid: trial_test_metrics(rs) for jid, rs in mine.items()},
        test=trial_test_metrics(rows),
    )


def trial_rows(
    sweep: str, run_id: str, trial: Trial, status: str, result: TrialResult, error: str | None
) -> list[dict[str, Any]]:
    """One row per (trial, job); the trial's parameters become columns."""
    now = datetime.now(timezone.utc)
    trial_test = {k: result.test.get(k) for k in SUMMARY_METRICS}
    rows = []
    for j in trial.jobs:
        rows.append(
            {
                "sweep": sweep,
                "trial": trial.key,
                "run_id": run_id,
                "status": status,
                "error": error,
                "objective": result.objective,
                "epochs_done": int(result.epoch or 0),
                "epochs": j.epochs,
                **trial.setting,
                **trial_test,
                "job_id": j.id,
                "method": j.method,
                "dataset": j.train.dataset,
                "seed": j.seed,
                "job_val_accuracy": result.val.get(j.id),
                **{f"job_{k}": v for k, v in (result.tests.get(j.id) or {}).items()},
                "created_at": now,
            }
        )
    return rows


def write_trial(root: ResultsRoot, sweep: str, run_id: str, rows: list[dict[str, Any]]) -> str:
    path = root.sweep_files(sweep).trial_record(rows[0]["trial"], run_id)
    return store.write_parquet(pa.Table.from_pylist(rows), path)


def read_trials(root: ResultsRoot, sweep: str) -> list[dict[str, Any]]:
    """The latest record of each (trial, job) of a sweep."""
    import duckdb

    con = duckdb.connect()
    source = store.parquet_relation(con, root.sweep_files(sweep).trials, "_trials", hive=False)
    if source is None:
        return []
    sql = store.latest_sql(source, ("trial", "job_id")) + " ORDER BY trial, job_id"
    return con.sql(sql).to_arrow_table().to_pylist()


def kept_trials(root: ResultsRoot, sweep: str) -> set[str]:
    """--resume: the trials recorded done or stopped (failed and unfinished ones run again)."""
    return {r["trial"] for r in read_trials(root, sweep) if r["status"] in TERMINAL_KEEP}


def describe(sweep: Sweep) -> dict[str, Any]:
    """sweep.json: what the sweep is, for a reader of the results folder."""
    return {
        "name": sweep.name,
        "suite": sweep.suite,
        "params": sweep.params,
        "scheduler": sweep.scheduler,
        "grace_period": sweep.grace_period,
        "reduction_factor": sweep.reduction_factor,
        "objective": "HM over datasets of the seed-mean validation accuracy (base classes in "
        "base-to-novel)",
        "trials": [
            {"key": t.key, "setting": t.setting, "jobs": [j.id for j in t.jobs]}
            for t in sweep.trials
        ],
    }


# ---- outputs: summary table, plot, best configuration --------------------------------------

SUMMARY_METRICS = ("test_base", "test_novel", "test_hm", "test_accuracy")


@dataclass
class SweepResult:
    sweep: Sweep
    records: list[dict[str, Any]]  # read_trials
    skipped: list[str]  # trial keys kept from an earlier run (--resume)
    files: dict[str, str] = field(default_factory=dict)

    def trials(self) -> list[dict[str, Any]]:
        return summary_rows(self.records, self.sweep.params)

    def best(self) -> dict[str, Any] | None:
        return best_trial(self.trials())

    def best_setting(self) -> dict[str, Any] | None:
        best = self.best()
        if best is None:
            return None
        return {p: best[p] for p in self.sweep.params if best.get(p) is not None}


def summary_rows(records: list[dict[str, Any]], params: Sequence[str]) -> list[dict[str, Any]]:
    """One row per trial, best objective first."""
    by_trial: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["trial"] in by_trial:
            continue
        row = {"trial": r["trial"], **{p: r.get(p) for p in params}}
        row.update(
            status=r["status"], epochs=f"{r['epochs_done']}/{r['epochs']}", objective=r["objective"]
        )
        row.update({k: r.get(k) for k in SUMMARY_METRICS if r.get(k) is not None})
        row["error"] = r.get("error")
        by_trial[r["trial"]] = row
    return sorted(
        by_trial.values(),
        key=lambda r: (
            r["status"] != "done",
            -(r["objective"] if r["objective"] is not None else -1),
        ),
    )


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed trial with the highest validation objective (stopped ones never win)."""
    done = [r for r in rows if r["status"] == "done" and r["objective"] is not None]
    return max(done, key=lambda r: r["objective"]) if done else None


def summary_markdown(result: SweepResult) -> str:
    rows = result.trials()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    body = [
        [fmt(r.get(c)) if isinstance(r.get(c), float) else str(r.get(c) or "") for c in cols]
        for r in rows
    ]
    setting = result.best_setting()
    lines = [
        f"# Sweep `{result.sweep.name}` (suite {result.sweep.suite}, {result.sweep.scheduler})",
        "Objective: HM over datasets of the seed-mean validation accuracy (base classes only in "
        "base-to-novel); test metrics are recorded, never used for selection.",
        md_table(cols, body) if rows else "No trials recorded.",
    ]
    if setting:
        lines.append("Best configuration: `" + " ".join(best_overrides(setting)) + "`")
    return "\n\n".join(lines) + "\n"


def write_outputs(result: SweepResult, out: SweepFiles) -> dict[str, str]:
    """summary.md, objective.png and best.txt, each written atomically."""
    from dplbench.results.plots import objective_plot

    files = {"trials": out.trials}
    files["summary"] = storage.write(out.summary, summary_markdown(result))
    if result.records:
        fig = objective_plot(result.trials(), result.sweep.params, result.sweep.name)
        files["plot"] = storage.write(out.plot, partial(fig.savefig, format="png", dpi=110))
    setting = result.best_setting()
    if setting:
        files["best"] = storage.write(out.best, " ".join(best_overrides(setting)) + "\n")
    return files


def write_description(sweep: Sweep, out: SweepFiles) -> str:
    return storage.write(out.description, json.dumps(describe(sweep), indent=1, default=str))
