"""`dplbench tune`: a sweep's trials on Ray (run/launcher.py), recorded as they end.

Under FIFO with `--fuse K` the trials' jobs run as `dplbench run` runs jobs (run/suite.py): fused
across seeds and settings where their shapes agree (plan/fusion.py), each trial recorded once its
jobs have ended, from the rows and epoch rows they wrote. FIFO stops nothing, so no trial needs
Tune's per-trial reports; ASHA does, and runs unfused (run/preflight.py says so).

Each trial's record is written by the driver the moment the trial ends (done, stopped by ASHA, or
failed), so `--resume` needs no driver state: it reruns the same command and skips trials recorded
`done` or `stopped`; failed and unfinished ones run again, and their jobs continue from their last
per-epoch Train checkpoint. We do not use `Tuner.restore`: our own records survive a killed driver,
and settings are generated deterministically (seeded draws), so the same command yields the same
trial keys.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dplbench.plan.sweeps import Sweep, Trial
from dplbench.results import sweeps as records
from dplbench.results.sweeps import SweepResult, objective, trial_test_metrics
from dplbench.run import launcher
from dplbench.run.launcher import TrialEvent
from dplbench.run.prepare import prepare
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.trials import sweep_trial


def without_restarts(opts: ExecOptions) -> ExecOptions:
    """Sweeps: no Train restarts. When Tune kills a stopped trial, its controller would otherwise
    see the dead workers and create a new placement group just before dying too (leaked, never
    announced). A failed trial is recorded; --resume reruns it."""
    return replace(opts, max_failures=0)


def _scheduler(sweep: Sweep) -> Any:
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    if sweep.scheduler != "asha":
        return FIFOScheduler()
    # stop_last_trials=False: at max_t ASHA would otherwise stop a trial before its final report
    # (test metrics); our epochs end there anyway.
    return AsyncHyperBandScheduler(
        time_attr="epoch",
        metric="objective",
        mode="max",
        grace_period=sweep.grace_period,
        max_t=max(sweep.epochs, sweep.grace_period + 1),
        reduction_factor=sweep.reduction_factor,
        stop_last_trials=False,
    )


def run_sweep(
    sweep: Sweep, settings: RunSettings, opts: ExecOptions, on_event: TrialEvent | None = None
) -> SweepResult:
    """Run (or resume: opts.resume) a sweep on Ray; returns its records and writes its outputs."""
    settings = replace(settings, suite=sweep.suite, val_each_epoch=True)
    trials, skipped = list(sweep.trials), []
    if opts.resume:
        trials = records.pending_trials(sweep, settings.results)
        skipped = [t.key for t in sweep.trials if t not in trials]
    prepare([j for t in sweep.trials for j in t.jobs], settings.data, sweep.data.synthesize, True)
    out = records.sweep_dir(settings.results, sweep.name)
    records.write_description(sweep, out)
    by_key = {t.key: t for t in trials}

    def record(key: str, state: str, info: dict[str, Any]) -> None:
        if state in ("done", "stopped", "failed"):
            last = info.get("last") or {}
            rows = records.trial_rows(
                sweep.name, settings.run_id, by_key[key], state, last, info.get("error")
            )
            records.write_trial(settings.results, sweep.name, settings.run_id, rows)
        if on_event is not None:
            on_event(key, state, info)

    if trials and opts.fuse > 1:
        _run_fused(trials, settings, opts, record)
    elif trials:
        launcher.launch(
            sweep_trial,
            {t.key: list(t.jobs) for t in trials},
            settings,
            without_restarts(opts),
            record,
            _scheduler(sweep),
            sweep=sweep.name,
        )
    result = SweepResult(sweep, records.read_trials(settings.results, sweep.name), skipped)
    result.files = records.write_outputs(result, out)
    return result


def _run_fused(
    trials: list[Trial], settings: RunSettings, opts: ExecOptions, record: TrialEvent
) -> None:
    """The trials' jobs in fused groups (module docstring); trial events from their jobs'. A
    trial is recorded as soon as its last job has ended, so a killed driver loses none that did."""
    from dplbench.run.suite import run_jobs

    trial_of = {j.id: t for t in trials for j in t.jobs}
    epochs: dict[str, dict[str, int]] = {t.key: {} for t in trials}
    ended: dict[str, dict[str, str | None]] = {t.key: {} for t in trials}  # job -> its error

    def end(t: Trial, job_id: str, error: str | None) -> None:
        if job_id in ended[t.key]:
            return
        ended[t.key][job_id] = error
        if len(ended[t.key]) == len(t.jobs):
            errors = [e for e in ended[t.key].values() if e is not None]
            last = _trial_result(t, settings.results)
            if errors:
                record(t.key, "failed", {"last": last, "error": errors[0]})
            else:
                record(t.key, "done", {"last": {**last, "trial_done": 1}})

    def on_job(job_id: str, state: str, info: dict[str, Any]) -> None:
        t = trial_of.get(job_id)
        if t is None:
            return
        if state == "running" and not epochs[t.key]:
            record(t.key, "running", {})
        elif state == "result" and info.get("epoch") is not None:
            epochs[t.key][job_id] = int(info["epoch"]) + 1
            if len(epochs[t.key]) == len(t.jobs):  # every job of the trial is this far
                record(t.key, "result", {"epoch": min(epochs[t.key].values())})
        elif state in ("done", "failed"):
            end(t, job_id, None if state == "done" else str(info.get("error") or "failed"))

    outcomes = run_jobs([j for t in trials for j in t.jobs], settings, opts, on_job)
    for o in outcomes:  # jobs that ended without an event (e.g. --no-ray)
        end(trial_of[o.job.id], o.job.id, None if o.status == "done" else o.error or "failed")


def _trial_result(trial: Trial, results: str) -> dict[str, Any]:
    """What an unfused trial reports last (run/trials.py sweep_trial), from its jobs' rows and
    epoch rows: the last epoch's validation accuracies (of the run that trained it, for a job
    resumed after it), their objective, and the test metrics."""
    from dplbench.results import store

    ids = {"ids": [j.id for j in trial.jobs]}
    rows = store.query(
        results, "SELECT * FROM results WHERE list_contains($ids, job_id)", ids
    ).to_pylist()
    last_val = store.query(
        results,
        "SELECT job_id, arg_max(val_accuracy, epoch) AS val, max(epoch) + 1 AS epochs "
        "FROM epochs WHERE list_contains($ids, job_id) AND val_accuracy IS NOT NULL "
        "GROUP BY job_id",
        ids,
    ).to_pylist()
    vals = {j.id: None for j in trial.jobs} | {r["job_id"]: r["val"] for r in last_val}
    done = {r["job_id"]: r["epochs"] for r in last_val}
    mine = {j.id: [r for r in rows if r["job_id"] == j.id] for j in trial.jobs}
    return {
        "epoch": min(done.get(j.id, 0) for j in trial.jobs),
        "objective": objective(vals, trial.jobs),
        "val": vals,
        "tests": {jid: trial_test_metrics(rs) for jid, rs in mine.items()},
        **trial_test_metrics(rows),
    }
