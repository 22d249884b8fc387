"""`ResultsRoot`: the one owner of every name under a results root, local or URI.

    R/rows/suite=<s>/method=<m>/<job>-<run>.parquet      result rows (results/store.py)
    R/epochs/suite=<s>/method=<m>/<job>-<run>.parquet    per-epoch metrics
    R/outcomes/suite=<s>/method=<m>/<job>-<run>.parquet  per-sample outcomes of the evaluation
    R/status/suite=<s>/<run>.parquet                     job states of one driver run
    R/checkpoints/<job>/<job>-<run>/epoch_NNN.pt         the newest epoch of each run of a job
    R/checkpoints/<job>/final.pt                         the trained state (xd/dg evaluation, explain)
    R/logs/<job>-<run>[.rankN].log                       a failed job's traceback
    R/logs/ray-<run>.log                                 Ray's own messages (local disk: appended)
    R/logs/.<kind>/<name>                                bookkeeping markers (worker starts, kills)
    R/leases/<job>.json                                  which driver runs the job (run/leases.py)
    R/ray/[sweeps/<name>/]                               Ray Tune's experiment state; jobs/: Train's
    R/ray/[sweeps/<name>/]placement_groups/<run>/<trial>/<job>-<pg>   announced placement groups
    R/reports/<suite>/report.md, <section>.png           `dplbench report` (`ReportFiles`)
    R/reports/ablations/<name>.md                        ablation tables
    R/sweeps/<name>/trials/<trial>-<run>.parquet, summary.md, objective.png, best.txt, sweep.json
    R/bench/<device>.json                                calibrations (`bench model --results R`)
    R/explain/<name>/image_NN.png, text_tokens.md, maps.npz   `dplbench explain`
    R/mlruns, R/tensorboard/<suite>/<job>                experiment trackers (local disk)

The root travels as this object below the command line; nothing else joins names under it. The
one "newest run" rule of checkpoints is here (`resume_run`); the one of result rows is
`store.latest_sql`. Output folders a user may put elsewhere (`report --out`, `explain --out`) are
the same named-file classes over that folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dplbench import storage

CHECKPOINT_PATTERN = "epoch_[0-9][0-9][0-9].pt"
TABLES = ("rows", "epochs", "status", "outcomes")


def calibration_file(folder: str | os.PathLike, device: str) -> str:
    """A device's calibration in a bench folder (R/bench/, or the user's cache)."""
    return storage.join(folder, f"{device}.json")


@dataclass(frozen=True)
class ReportFiles:
    """A report's folder: report.md and one PNG per section with a figure."""

    folder: str

    @property
    def markdown(self) -> str:
        return storage.join(self.folder, "report.md")

    @staticmethod
    def figure_name(section: str) -> str:
        return f"{section}.png"

    def figure(self, section: str) -> str:
        return storage.join(self.folder, self.figure_name(section))


@dataclass(frozen=True)
class ExplainFiles:
    """`dplbench explain`'s folder: one figure per image, the text-token table, the arrays."""

    folder: str

    def image(self, i: int) -> str:
        return storage.join(self.folder, f"image_{i:02d}.png")

    @property
    def text_tokens(self) -> str:
        return storage.join(self.folder, "text_tokens.md")

    @property
    def arrays(self) -> str:
        return storage.join(self.folder, "maps.npz")


@dataclass(frozen=True)
class SweepFiles:
    """A sweep's folder: its trial records, summary, objective plot, best setting, description."""

    folder: str

    @property
    def trials(self) -> str:
        return storage.join(self.folder, "trials")

    def trial_record(self, trial: str, run_id: str) -> str:
        return storage.join(self.trials, f"{trial}-{run_id}.parquet")

    @property
    def summary(self) -> str:
        return storage.join(self.folder, "summary.md")

    @property
    def plot(self) -> str:
        return storage.join(self.folder, "objective.png")

    @property
    def best(self) -> str:
        return storage.join(self.folder, "best.txt")

    @property
    def description(self) -> str:
        return storage.join(self.folder, "sweep.json")


@dataclass(frozen=True)
class ResultsRoot:
    path: str

    def __init__(self, path: str | os.PathLike | ResultsRoot) -> None:
        raw = path.path if isinstance(path, ResultsRoot) else path
        object.__setattr__(self, "path", storage.resolve(raw))

    def __str__(self) -> str:
        return self.path

    @property
    def is_uri(self) -> bool:
        return storage.is_uri(self.path)

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

    def markers(self, kind: str) -> str:
        """The folder of one kind of marker."""
        return self._join("logs", f".{kind}")

    def lease(self, job_id: str) -> str:
        return self._join("leases", f"{job_id}.json")

    def checkpoints(self, job_id: str, run_name: str | None = None) -> str:
        return self._join("checkpoints", job_id, *([run_name] if run_name else []))

    def checkpoint(self, job_id: str, run_name: str, epoch: int) -> str:
        """The checkpoint a job run writes after `epoch` (CHECKPOINT_PATTERN)."""
        return self._join("checkpoints", job_id, run_name, f"epoch_{epoch:03d}.pt")

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
        """Ray Tune's experiment state."""
        return self._join("ray", *(["sweeps", sweep] if sweep else []))

    def train_storage(self, sweep: str | None = None) -> str:
        """Ray Train's own run state (its TorchTrainer runs)."""
        return storage.join(self.ray_storage(sweep), "jobs")

    def placement_groups(self, run_id: str, trial: str, sweep: str | None = None) -> str:
        """Where a trial's Train runs announce their placement groups (run/placement_groups.py)."""
        return storage.join(self.ray_storage(sweep), "placement_groups", run_id, trial)

    @staticmethod
    def placement_group(folder: str, job_id: str, group_hex: str) -> str:
        """One announced placement group in a trial's folder (`placement_groups`)."""
        return storage.join(folder, f"{job_id}-{group_hex}")

    # ---- outputs -----------------------------------------------------------------------------

    def report_files(self, suite: str | None) -> ReportFiles:
        return ReportFiles(self._join("reports", suite or "all"))

    def ablation_report(self, name: str) -> str:
        return self._join("reports", "ablations", f"{name}.md")

    def sweep_files(self, name: str) -> SweepFiles:
        return SweepFiles(self._join("sweeps", name))

    def bench_dir(self) -> str:
        return self._join("bench")

    def calibration(self, device: str) -> str:
        return calibration_file(self.bench_dir(), device)

    def explain_files(self, name: str) -> ExplainFiles:
        return ExplainFiles(self._join("explain", name))

    def tracking_dir(self, kind: str, suite: str | None = None, run: str | None = None) -> Path:
        """MLflow's file store / TensorBoard's event files (per suite, per run): local disk (a
        temporary folder when results live on an object store)."""
        base = storage.local_dir(self.path, "dplbench-tracking") / kind
        return base.joinpath(*[p for p in (suite, run) if p])
