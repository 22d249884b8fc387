"""Experiment trackers: each job's per-epoch metrics and final scores streamed to MLflow or
TensorBoard as the run goes (`--track mlflow|tensorboard`). Parquet stays the record; trackers are
optional extras, imported only when asked for.

The driver feeds them the same events as the live table (run/events.py; in `--no-ray` runs too),
so one implementation serves every mode; Ray Tune's own logger callbacks would see only Ray runs.

    mlflow       one MLflow run per job in the experiment named after the suite; the tracking URI
                 is --track-uri, else a file store at R/mlruns
    tensorboard  one event-file folder per job: --track-uri, else R/tensorboard/<suite>/<job>
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dplbench.errors import ConfigError
from dplbench.plan.plan import Plan
from dplbench.request import TRACKERS
from dplbench.results.root import ResultsRoot
from dplbench.run.events import EpochDone, Event, JobEnded, TrialEnded, TrialProgress

log = logging.getLogger(__name__)
# Metrics of an epoch report worth a chart (the rest are bookkeeping).
_SKIP = {"epoch", "attempt", "samples"}


def _scalars(info: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in info.items()
        if k not in _SKIP and isinstance(v, int | float) and not isinstance(v, bool)
    }


class Tracker:
    """Driver-side: a sink of the plan's events (run/events.py)."""

    def __init__(self, kind: str, root: ResultsRoot, plan: Plan, uri: str | None) -> None:
        if kind not in TRACKERS:
            raise ConfigError(f"--track {kind!r}: choose one of {', '.join(TRACKERS)}")
        suite = plan.name
        self.kind, self.suite, self.root, self.uri = kind, suite, root, uri
        self.jobs = {j.id: j for j in plan.jobs}
        self.trials = {t.key: t for t in plan.sweep.trials} if plan.sweep is not None else {}
        if kind == "mlflow":
            try:
                import mlflow
            except ImportError:
                raise ConfigError(
                    "--track mlflow needs MLflow: pip install 'dplbench[track]'"
                ) from None
            if uri is None:  # MLflow 3 keeps file stores for those who ask for them: we do
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            try:
                self.client = mlflow.MlflowClient(
                    uri or root.tracking_dir("mlruns").resolve().as_uri()
                )
                exp = self.client.get_experiment_by_name(suite)
                self.experiment = exp.experiment_id if exp else self.client.create_experiment(suite)
            except Exception as e:
                raise ConfigError(f"--track mlflow: {type(e).__name__}: {e}") from None
            self.where = self.client.tracking_uri
        else:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "--track tensorboard needs tensorboardX: pip install 'dplbench[track]'"
                ) from None
            self.writer_cls = SummaryWriter
            self.where = uri or str(root.tracking_dir("tensorboard", suite))
        self.runs: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        try:
            if self.trials:  # `tune`: one run per trial, its objective per epoch, its tests
                self._trial(event)
            else:  # `run` / `ablate`: one run per job, its epochs, its scores
                self._job(event)
        except Exception as e:  # a tracker never fails a run: the Parquet record is the truth
            log.warning("tracker %s: %s: %s", self.kind, type(e).__name__, e)

    def _job(self, event: Event) -> None:
        job = self.jobs.get(getattr(event, "job_id", None))
        if job is None:
            return
        tags = {"job_id": job.id, "method": job.method, "protocol": job.protocol,
                "dataset": job.train.dataset, "seed": str(job.seed)}  # fmt: skip
        name = f"{job.method}-{job.train.dataset}-s{job.seed}-{job.id[:8]}"
        if isinstance(event, EpochDone):
            self._log(job.id, name, tags, _scalars(event.metrics), event.epoch)
        elif isinstance(event, JobEnded):
            final = {f"accuracy_{k}": float(v) for k, v in event.accuracy.items()}
            self._log(job.id, name, tags, final, job.epochs)
            self._close(job.id, event.status)

    def _trial(self, event: Event) -> None:
        trial = self.trials.get(getattr(event, "trial", None))
        if trial is None:
            return
        tags = {"trial": trial.key, **{k: str(v) for k, v in trial.setting.items()}}
        name = f"trial-{trial.key}"
        if isinstance(event, TrialProgress) and event.objective is not None:
            self._log(trial.key, name, tags, {"objective": event.objective}, event.epoch)
        elif isinstance(event, TrialEnded):
            test = event.result.test if event.result is not None else {}
            final = {k: float(v) for k, v in test.items() if v is not None}
            self._log(trial.key, name, tags, final, max(j.epochs for j in trial.jobs))
            self._close(trial.key, event.status)

    def _open(self, key: str, name: str, tags: dict[str, str]) -> Any:
        if key not in self.runs:
            if self.kind == "mlflow":
                run = self.client.create_run(self.experiment, run_name=name, tags=tags)
                self.runs[key] = run.info.run_id
            else:
                folder = (
                    Path(self.uri) / key
                    if self.uri
                    else self.root.tracking_dir("tensorboard", self.suite, key)
                )
                self.runs[key] = self.writer_cls(str(folder))
        return self.runs[key]

    def _log(self, key, name, tags, metrics: dict[str, float], step: int) -> None:
        run = self._open(key, name, tags)
        for k, v in metrics.items():
            if self.kind == "mlflow":
                self.client.log_metric(run, k, v, step=step)
            else:
                run.add_scalar(k, v, step)

    def _close(self, key: str, state: str) -> None:
        run = self.runs.get(key)
        if run is None:
            return
        if self.kind == "mlflow":
            self.client.set_terminated(run, "FINISHED" if state == "done" else "FAILED")
        else:
            run.close()
