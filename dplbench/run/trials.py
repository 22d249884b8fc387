"""The two kinds of Tune trial that run/launcher.py launches: `job_trial` (one job, `dplbench
run` and `ablate`) and `sweep_trial` (one sweep setting: its jobs at once, the validation objective
reported every epoch for ASHA). Jobs run as `launcher.fit_job` (a TorchTrainer) or, single-worker
jobs of `run`, in the trial's own process (`launcher.run_in_trial`)."""

from __future__ import annotations

import threading
from typing import Any

import ray.tune as tune

from dplbench.plan.jobs import Job
from dplbench.results.sweeps import objective, trial_test_metrics
from dplbench.run.failures import JobFailed, one_line
from dplbench.run.launcher import TrialSpec, fit_job, run_in_trial


def job_trial(config: dict[str, Any]) -> None:
    """A Tune trial of `dplbench run`: one job, in this process (a plain trial) or as a
    TorchTrainer run; its epochs reach the live table through Tune, and the last report carries
    where it ran and what it scored. A job that fails ends the trial with its one line: retrying
    the same work would fail the same way (a process that dies is restarted by Tune)."""
    spec: TrialSpec = config["spec"]
    (job,) = spec.jobs
    try:
        if spec.plain:
            out = run_in_trial(job, spec)
        else:
            out = fit_job(job, spec, report_to_tune=True)
    except JobFailed as e:
        tune.report({"trial_done": 0, "failed": str(e)})
        return
    rows = (out or {}).get("rows") or []
    tune.report({"trial_done": 1, **job_summary(rows)})


def job_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a finished job ran and its accuracy per evaluated subsample (the live table)."""
    return {
        "node": rows[0]["node"] if rows else None,
        "accuracy": {r["subsample"]: r["accuracy"] for r in rows},
    }


def _value_at(history: dict[int, float], epoch: int) -> float | None:
    """A job's validation accuracy at `epoch` (0-based): the latest at or before it; a job resumed
    past `epoch` has only later values, and gives its earliest."""
    before = [e for e in history if e <= epoch]
    if before:
        return history[max(before)]
    return history[min(history)] if history else None


def sweep_trial(config: dict[str, Any]) -> None:
    """A Tune trial of `dplbench tune`: the setting's jobs, concurrently, one TorchTrainer each.
    Reports the objective after every epoch all its jobs finished (time attribute `epoch`,
    1-based), so ASHA can stop it; the last report also carries the test metrics and `trial_done`.
    When ASHA stops the trial, Tune kills this actor, and with it the Train controllers it owns."""
    from ray.util.queue import Empty, Queue

    spec: TrialSpec = config["spec"]
    jobs: list[Job] = list(spec.jobs)
    queue = Queue(actor_options={"num_cpus": 0})  # 0: never waits for a CPU on a full cluster
    outcomes: dict[str, tuple[str, Any]] = {}

    def fit(job: Job) -> None:
        try:
            out = fit_job(job, spec, queue)
            outcomes[job.id] = ("done", out)
        except BaseException as e:  # noqa: BLE001 - reported by the trial thread below
            outcomes[job.id] = ("failed", e)

    for j in jobs:
        threading.Thread(target=fit, args=(j,), daemon=True).start()
    history: dict[str, dict[int, float]] = {j.id: {} for j in jobs}
    epochs = max(j.epochs for j in jobs)
    reported = 0  # epochs reported to Tune so far

    def ready(job: Job, epoch: int) -> bool:
        h = history[job.id]
        return job.id in outcomes or (bool(h) and max(h) >= min(epoch, job.epochs - 1))

    while True:
        try:
            job_id, epoch, val = queue.get(timeout=0.5)
            history[job_id][epoch] = val
            continue
        except Empty:
            pass
        for job_id, (status, value) in list(outcomes.items()):
            if status == "failed":
                raise JobFailed(f"job {job_id}: {one_line(value)}")
        # The last epoch is reported only with the test metrics, once every job has finished.
        while reported < epochs - 1 and all(ready(j, reported) for j in jobs):
            vals = {j.id: _value_at(history[j.id], reported) for j in jobs}
            tune.report({"epoch": reported + 1, "objective": objective(vals, jobs), "val": vals})
            reported += 1
        if len(outcomes) == len(jobs):
            break
    vals = {jid: out["val_accuracy"] for jid, (_, out) in outcomes.items()}
    rows = {jid: out["rows"] for jid, (_, out) in outcomes.items()}
    tune.report(
        {
            "epoch": epochs,
            "objective": objective(vals, jobs),
            "val": vals,
            "tests": {jid: trial_test_metrics(r) for jid, r in rows.items()},
            **trial_test_metrics([r for rs in rows.values() for r in rs]),
            "trial_done": 1,
        }
    )
