"""Experiment trackers: each job's per-epoch metrics and final scores streamed to MLflow or
TensorBoard as the run goes (`--track mlflow|tensorboard`). Parquet stays the record; trackers are
optional extras, imported only when asked for.

The driver feeds them from the same trial events as the live table (in `--no-ray` runs too), so
one implementation serves every mode; Ray Tune's own logger callbacks would see only Ray runs.

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
from dplbench.request import TRACKERS
from dplbench.results.root import ResultsRoot

log = logging.getLogger(__name__)
# Metrics of an epoch report worth a chart (the rest are bookkeeping).
_SKIP = {"epoch", "attempt", "samples", "trial_done", "node"}


def _scalars(info: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in info.items()
        if k not in _SKIP and isinstance(v, int | float) and not isinstance(v, bool)
    }


class Tracker:
    """Driver-side: `event(job, state, info)` with the launcher's trial events."""

    def __init__(self, kind: str, results_root: str, suite: str, uri: str | None) -> None:
        if kind not in TRACKERS:
            raise ConfigError(f"--track {kind!r}: choose one of {', '.join(TRACKERS)}")
        self.kind, self.suite = kind, suite
        root = ResultsRoot(results_root)
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

    def job_event(self, job: Any, state: str, info: dict[str, Any]) -> None:
        """A job of `run` / `ablate`."""
        tags = {"job_id": job.id, "method": job.method, "protocol": job.protocol,
                "dataset": job.train.dataset, "seed": str(job.seed)}  # fmt: skip
        name = f"{job.method}-{job.train.dataset}-s{job.seed}-{job.id[:8]}"
        self._event(job.id, name, tags, job.epochs, state, info)

    def trial_event(self, trial: Any, state: str, info: dict[str, Any]) -> None:
        """A trial of `tune`: its objective per epoch, its test metrics at the end."""
        tags = {"trial": trial.key, **{k: str(v) for k, v in trial.setting.items()}}
        epochs = max(j.epochs for j in trial.jobs)
        self._event(trial.key, f"trial-{trial.key}", tags, epochs, state, info)

    def _event(self, key, name, tags, epochs, state, info) -> None:
        try:
            if state == "result" and "epoch" in info:
                self._log(key, name, tags, _scalars(info), int(info["epoch"]))
            elif state in ("done", "failed", "stopped"):
                last = info.get("last") or {}
                final = {f"accuracy_{k}": float(v) for k, v in (last.get("accuracy") or {}).items()}
                final.update({k: v for k, v in _scalars(last).items() if k.startswith("test_")})
                self._log(key, name, tags, final, epochs)
                self._close(key, state)
        except Exception as e:  # a tracker never fails a run: the Parquet record is the truth
            log.warning("tracker %s: %s: %s", self.kind, type(e).__name__, e)

    def _open(self, key: str, name: str, tags: dict[str, str]) -> Any:
        if key not in self.runs:
            if self.kind == "mlflow":
                run = self.client.create_run(self.experiment, run_name=name, tags=tags)
                self.runs[key] = run.info.run_id
            else:
                self.runs[key] = self.writer_cls(str(Path(self.where) / key))
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
