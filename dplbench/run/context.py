"""Where a worker runs: its rank, device, and how it reports epochs and finds checkpoints.

- `LocalContext`: one worker in this process; checkpoints in the results root (`CheckpointStore`).
  It serves `--no-ray` runs, and single-worker jobs run as plain Tune trials (each epoch goes to
  `on_epoch` as an `EpochDone`), where a trial that died is restarted by Tune and continues from
  the store.
- `RayTrainContext` (run/trials.py): a Ray Train worker, checkpoints in the results root too.

The train loop (run/train_loop.py) sees only the `WorkerContext` protocol. It hands a checkpoint
over as a folder holding STATE_FILE, and is handed back the newest one's file, which it reads as
weights only (run/state_file.py).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from dplbench import storage
from dplbench.results.root import CHECKPOINT_PATTERN, ResultsRoot
from dplbench.run.events import EpochDone

STATE_FILE = "state.pt"


class WorkerContext(Protocol):
    rank: int
    world_size: int
    device: torch.device
    node: str | None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def latest_checkpoint(self) -> str | None: ...


class CheckpointStore:
    """One job run's checkpoints on the results root (local or object store), the newest epoch's
    kept (results/root.py). `run_name` is `<job_id>-<run_id>`; with --resume it is the job's
    earlier run whose newest checkpoint is the latest (`ResultsRoot.resume_run`), so the resumed
    run continues from there. Plain trials, DDP workers and --no-ray runs all restart from here."""

    def __init__(self, root: ResultsRoot, job_id: str, run_name: str) -> None:
        self.root, self.job_id, self.run_name = root, job_id, run_name
        self.dir = root.checkpoints(job_id, run_name)

    def _files(self) -> list[str]:
        return storage.listdir(self.dir, CHECKPOINT_PATTERN)

    def save(self, epoch: int, checkpoint_dir: str) -> None:
        older = self._files()
        path = self.root.checkpoint(self.job_id, self.run_name, epoch)
        storage.write(path, (Path(checkpoint_dir) / STATE_FILE).read_bytes())
        for old in older:  # the newest is all a restart or --resume needs
            if old != path:
                storage.remove(old)

    def latest(self) -> str | None:
        """The newest checkpoint's file (a path or an object-store URI), or None."""
        files = self._files()
        return files[-1] if files else None


def epoch_done(job_id: str, metrics: dict[str, Any]) -> EpochDone:
    """The event of an epoch's metrics as the train loop reports them (with "epoch")."""
    rest = {k: v for k, v in metrics.items() if k != "epoch"}
    return EpochDone(job_id, int(metrics["epoch"]), rest)


class LocalContext:
    """One worker in this process, checkpoints in the results root; `on_epoch` receives every
    epoch (a plain Tune trial passes run/tune_io.py `report`, --no-ray the driver's sink)."""

    def __init__(
        self,
        root: ResultsRoot,
        job_id: str,
        run_name: str | None = None,
        device: torch.device | None = None,
        node: str | None = None,
        on_epoch: Callable[[EpochDone], None] | None = None,
    ):
        self.rank, self.world_size = 0, 1
        self.job_id = job_id
        self.node = node or socket.gethostname()
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.store = CheckpointStore(root, job_id, run_name or f"{job_id}-local")
        self.on_epoch = on_epoch
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            self.store.save(int(metrics["epoch"]), checkpoint_dir)
        self.reports.append(metrics)
        if self.on_epoch is not None:
            self.on_epoch(epoch_done(self.job_id, metrics))

    def latest_checkpoint(self) -> str | None:
        return self.store.latest()
