"""`dplbench tune`: a sweep's trials on Ray (run/launcher.py), recorded as they end.

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

from dplbench.plan.sweeps import Sweep
from dplbench.results import sweeps as records
from dplbench.results.sweeps import SweepResult
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

    if trials:
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
