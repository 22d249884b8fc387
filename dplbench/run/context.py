"""Where a worker runs: its rank, device, and how it reports epochs and finds checkpoints.

`LocalContext` runs a job in this process (no Ray); the launcher's `RayTrainContext` runs it on a
Ray Train worker. The train loop (run/worker.py) sees only this protocol.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any, Protocol

import torch


class WorkerContext(Protocol):
    rank: int
    world_size: int
    device: torch.device
    node: str | None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def latest_checkpoint(self) -> str | None: ...


class LocalContext:
    """In-process, single worker: checkpoints go to R/checkpoints/<job>/epoch_XXX/."""

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
        self.dir = Path(results_root) / "checkpoints" / job_id
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir:
            dest = self.dir / f"epoch_{metrics['epoch']:03d}"
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(dest, ignore_errors=True)  # a rerun of the same epoch replaces it
            os.replace(tmp, dest)

    def latest_checkpoint(self) -> str | None:
        if not self.resume:
            return None  # a fresh run starts from scratch whatever an earlier run left
        done = sorted(self.dir.glob("epoch_[0-9][0-9][0-9]"))
        return str(done[-1]) if done else None
