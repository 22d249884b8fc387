"""`ResultsRoot`: the one owner of every path under a results root, local or URI.

    R/rows/suite=<s>/method=<m>/<job>-<run>.parquet      result rows (results/store.py)
    R/epochs/suite=<s>/method=<m>/<job>-<run>.parquet    per-epoch metrics
    R/status/suite=<s>/<run>.parquet                     job states of one driver run
    R/checkpoints/<job>/<job>-<run>/epoch_NNN.pt         the newest epoch of each run of a job
    R/checkpoints/<job>/final.pt                         the trained state (xd/dg evaluation, explain)
    R/logs/<job>-<run>[.rankN].log                       a failed job's traceback
    R/logs/ray-<run>.log                                 Ray's own messages (local disk: appended)
    R/leases/<job>.json                                  which driver runs the job (run/leases.py)
    R/ray/[sweeps/<name>/]                               Ray Tune's experiment state
    R/reports/<suite>/, R/reports/ablations/<name>.md    reports
    R/sweeps/<name>/                                     a sweep's trial records, summary, best
    R/bench/<device>.json                                calibrations (`bench model --results R`)
    R/explain/<name>/                                    `dplbench explain`
    R/mlruns, R/tensorboard/<suite>/                     experiment trackers (local disk)

Nothing else joins paths under a root. The one "newest run" rule of checkpoints is here
(`resume_run`); the one of result rows is `store.latest_sql`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dplbench import storage

CHECKPOINT_PATTERN = "epoch_[0-9][0-9][0-9].pt"


@dataclass(frozen=True)
class ResultsRoot:
    path: str

    def __init__(self, path: str | os.PathLike | ResultsRoot) -> None:
        raw = path.path if isinstance(path, ResultsRoot) else path
        object.__setattr__(self, "path", storage.resolve(raw))

    def __str__(self) -> str:
        return self.path

    def _join(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    # ---- tables ----------------------------------------------------------------------------

    def table(self, table: str) -> str:
        return self._join(table)

    def table_file(self, table: str, suite: str, method: str, job_id: str, run_id: str) -> str:
        return self._join(table, f"suite={suite}", f"method={method}", f"{job_id}-{run_id}.parquet")

    def status_file(self, suite: str, run_id: str) -> str:
        return self._join("status", f"suite={suite}", f"{run_id}.parquet")

    # ---- one job ---------------------------------------------------------------------------

    def log(self, job_id: str, run_id: str, rank: int = 0) -> str:
        suffix = f".rank{rank}" if rank else ""
        return self._join("logs", f"{job_id}-{run_id}{suffix}.log")

    def ray_log(self, run_id: str) -> Path:
        """Appended to as Ray writes, so on local disk even when results live on an object store."""
        return storage.local_dir(self.path, "dplbench-logs") / "logs" / f"ray-{run_id}.log"

    def marker(self, kind: str, name: str) -> str:
        """Small bookkeeping files of a run (worker starts, injected kills)."""
        return self._join("logs", f".{kind}", name)

    def lease(self, job_id: str) -> str:
        return self._join("leases", f"{job_id}.json")

    def checkpoints(self, job_id: str, run_name: str | None = None) -> str:
        return self._join("checkpoints", job_id, *([run_name] if run_name else []))

    def final_state(self, job_id: str) -> str:
        return self._join("checkpoints", job_id, "final.pt")

    def resume_run(self, job_id: str, run_id: str, resume: bool) -> str:
        """The checkpoint folder name a job run writes to: `<job>-<run>`; with --resume the job's
        earlier run whose newest checkpoint is the latest, so that the run continues there."""
        if resume:
            newest = {}
            for run in storage.subdirs(self.checkpoints(job_id)):
                files = storage.listdir(self.checkpoints(job_id, run), CHECKPOINT_PATTERN)
                if run.startswith(f"{job_id}-") and files:
                    newest[run] = storage.name(files[-1])
            if newest:
                return max(newest, key=lambda r: newest[r])
        return f"{job_id}-{run_id}"

    # ---- Ray ---------------------------------------------------------------------------------

    def ray_storage(self, sweep: str | None = None) -> str:
        """Ray Tune's experiment state (and Ray Train's, under `jobs/`)."""
        return self._join("ray", *(["sweeps", sweep] if sweep else []))

    def placement_groups(self, run_id: str, trial: str, sweep: str | None = None) -> str:
        """Where a trial's Train runs announce their placement groups (run/placement_groups.py)."""
        return storage.join(self.ray_storage(sweep), "placement_groups", run_id, trial)

    # ---- outputs -----------------------------------------------------------------------------

    def report_dir(self, suite: str | None) -> str:
        return self._join("reports", suite or "all")

    def ablation_report(self, name: str) -> str:
        return self._join("reports", "ablations", f"{name}.md")

    def sweep_dir(self, name: str) -> str:
        return self._join("sweeps", name)

    def bench_dir(self) -> str:
        return self._join("bench")

    def explain_dir(self, name: str) -> str:
        return self._join("explain", name)

    def tracking_dir(self, kind: str, suite: str | None = None) -> Path:
        """MLflow's file store / TensorBoard's event files: local disk (a temporary folder when
        results live on an object store)."""
        base = storage.local_dir(self.path, "dplbench-tracking")
        return base / kind / suite if suite else base / kind
