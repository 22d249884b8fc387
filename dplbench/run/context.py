"""Where a worker runs: its rank, device, and how it reports epochs and finds checkpoints.

`LocalContext` runs a job in this process (no Ray); the launcher's `RayTrainContext` runs it on a
Ray Train worker. The train loop (run/train_loop.py) sees only this protocol. A checkpoint is a
folder holding STATE_FILE.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from dplbench.results import location

STATE_FILE = "state.pt"


class WorkerContext(Protocol):
    rank: int
    world_size: int
    device: torch.device
    node: str | None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def latest_checkpoint(self) -> str | None: ...


class LocalContext:
    """In-process, single worker: each epoch's checkpoint is R/checkpoints/<job>/epoch_XXX.pt
    (the newest is kept), on whatever filesystem the results root is (results/location.py)."""

    def __init__(
        self,
        results_root: str,
        job_id: str,
        device: torch.device | None = None,
        resume: bool = False,
    ):
        self.resume = resume  # continue from this job's last epoch checkpoint, if any
        self.rank, self.world_size = 0, 1
        self.node = socket.gethostname()
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dir = location.join(results_root, "checkpoints", job_id)
        self.reports: list[dict[str, Any]] = []
        self._restored: tempfile.TemporaryDirectory | None = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir:
            older = self._checkpoints()
            data = (Path(checkpoint_dir) / STATE_FILE).read_bytes()
            location.write(location.join(self.dir, f"epoch_{metrics['epoch']:03d}.pt"), data)
            for path in older:  # the newest is all a resume needs
                if not path.endswith(f"epoch_{metrics['epoch']:03d}.pt"):
                    location.remove(path)

    def _checkpoints(self) -> list[str]:
        return location.listdir(self.dir, "epoch_[0-9][0-9][0-9].pt")

    def latest_checkpoint(self) -> str | None:
        if not self.resume:
            return None  # a fresh run starts from scratch whatever an earlier run left
        done = self._checkpoints()
        if not done:
            return None
        self._restored = tempfile.TemporaryDirectory()
        (Path(self._restored.name) / STATE_FILE).write_bytes(location.read_bytes(done[-1]))
        return self._restored.name
