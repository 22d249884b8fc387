"""The training epochs of one job on one worker (no Ray: the context reports and checkpoints).

Every epoch ends with a checkpoint through the context: the trainable state, the optimiser, and
the epoch rows of this run so far, so a worker restarted from it continues the same `epochs`
table (every epoch once). The lr schedule is a pure function of (epoch, step): nothing else to
restore.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpl.methods.base import PromptedCLIP
from dpl.optim import build_optimizer
from dpl.schedules import set_lr
from dplbench import storage
from dplbench.data.epochs import train_loader
from dplbench.data.transforms import ViewConfig
from dplbench.data.view import DatasetView
from dplbench.plan.jobs import Job
from dplbench.run.context import STATE_FILE, WorkerContext
from dplbench.run.evaluate import autocast, count_correct, evaluate, image_size
from dplbench.run.settings import RunSettings

log = logging.getLogger(__name__)


class _LossModule(nn.Module):
    """DDP syncs gradients of what its forward computed: route the loss through forward."""

    def __init__(self, model: PromptedCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict, epoch: int, epochs: int) -> dict[str, torch.Tensor]:
        return self.model.losses(batch, epoch, epochs)


def _ddp(module: nn.Module, ctx: WorkerContext) -> nn.Module:
    dist = torch.distributed
    if ctx.world_size > 1 and dist.is_available() and dist.is_initialized():
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    return module


COMPILE_BACKENDS = ("aot_eager", "eager", "inductor")


def maybe_compile(module: nn.Module, how: str | None) -> nn.Module:
    """`module` under torch.compile (`how`: a mode, or a backend name), or `module` itself."""
    if not how:
        return module
    if how in COMPILE_BACKENDS:
        return torch.compile(module, backend=how)
    return torch.compile(module, mode=how)


class _Step:
    """The training step's forward: compiled when asked, falling back to eager once for good
    when the compiled one fails (an op the compiler cannot take), never silently."""

    def __init__(self, module: nn.Module, how: str | None) -> None:
        self.eager, self.run = module, maybe_compile(module, how)

    def __call__(self, *args):
        try:
            return self.run(*args)
        except Exception as e:
            if self.run is self.eager:
                raise
            log.warning(
                "compiled training step failed (%s: %s); running eager", type(e).__name__, e
            )
            self.run = self.eager
            return self.run(*args)


def global_rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_global_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Run a block without moving any random stream training draws from (torch's CPU and device
    generators, Python's, NumPy's)."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        yield
    random.setstate(py)
    np.random.set_state(np_state)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def _fail_if_asked(job: Job, settings: RunSettings, epoch: int) -> None:
    """Testing hook, RunSettings.fail_job "<job id prefix>[@<epoch>][:kill]": raise at that
    epoch, or (":kill") SIGKILL this worker process there, once per run (a marker file says so)."""
    if not settings.fail_job:
        return
    spec, _, how = settings.fail_job.partition(":")
    prefix, _, at = spec.partition("@")
    if job.id.startswith(prefix) and epoch == int(at or 0):
        if how == "kill":
            marker = settings.root.marker("killed", f"{job.id}-{settings.run_id}")
            if not storage.exists(marker):
                storage.write(marker, b"")
                os.kill(os.getpid(), signal.SIGKILL)
            return
        raise RuntimeError(f"job {job.id}: failure injected at epoch {epoch}")


def _count_attempt(job: Job, settings: RunSettings) -> int:
    """This start of the job's training in this run: 1, then 2 after a worker restart, ... (a
    marker per start; checkpoints cannot count them: a restart may come before the newest one
    is registered)."""
    root = settings.root
    n = len(storage.listdir(root.markers("attempts"), f"{job.id}-{settings.run_id}-*")) + 1
    storage.write(root.marker("attempts", f"{job.id}-{settings.run_id}-{n}"), b"")
    return n


class Training:
    """One job's training on one worker: its data, optimiser and schedule, where it resumes, and
    its epoch rows. `train` drives one; the fused loop (run/fused_loop.py) drives several."""

    def __init__(
        self, model: PromptedCLIP, job: Job, settings: RunSettings, ctx: WorkerContext, rows: list
    ) -> None:
        cfg = model.cfg
        self.model, self.job, self.settings, self.ctx, self.rows = model, job, settings, ctx, rows
        t = job.train
        self.view = DatasetView.open(
            settings.data, t.dataset, "train", t.shots, t.seed, t.subsample, t.imbalance
        )
        model.set_classes(self.view.classnames, self.view.template, self.view.dataset)
        views = ViewConfig(image_size(model), cfg.train_view, with_clean=cfg.frozen_view == "clean")
        self.loader = train_loader(
            self.view,
            cfg.optim.batch_size,
            views,
            settings.how.loader_workers,
            ctx.rank,
            ctx.world_size,
            seed=job.seed,
            on_error=settings.policy.on_data_error,
            last_batch=cfg.optim.last_batch,
        )
        self.val_view = (
            DatasetView.open(settings.data, t.dataset, "val", t.shots, t.seed, t.subsample, None)
            if settings.val_each_epoch
            else None
        )
        self.optimizer = build_optimizer(model)
        self.start, self.attempt = 0, _count_attempt(job, settings) if ctx.rank == 0 else 0
        self.resumed_rng: dict | None = None
        # Where the job's random streams are (what a checkpoint keeps): the global ones for a job
        # trained alone; a fused member's own (run/fused_loop.py sets it).
        self.rng_state = lambda: global_rng_state(ctx.device)
        ckpt = ctx.latest_checkpoint()
        if ckpt:
            state = torch.load(Path(ckpt) / STATE_FILE, map_location=ctx.device, weights_only=True)
            model.load_trainable_state(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.start = int(state["epoch"]) + 1
            # A restart within this run continues its epochs table; a --resume run (another run
            # id) records only what it trains, the earlier run's file keeps the rest.
            rows += [r for r in state.get("epoch_rows", []) if r["run_id"] == settings.run_id]
            self.resumed_rng = state.get("rng")  # its random streams where they stopped
            log.info("job %s: resuming after epoch %d", job.id, self.start - 1)
        self.total = cfg.optim.iterations  # a step budget instead of epochs (CLIP-LoRA)
        nb = self.loader.num_batches
        self.epochs = math.ceil(self.total / nb) if self.total else cfg.optim.epochs

    def begin_epoch(self, epoch: int) -> None:
        _fail_if_asked(self.job, self.settings, epoch)
        self.loader.set_epoch(epoch)
        self.model.train()
        self.tic, self.sums, self.n, self.samples = time.perf_counter(), defaultdict(float), 0, 0

    def batches(self, epoch: int) -> Iterator[tuple[int, dict | None]]:
        """(step, batch on the device) of the epoch within the step budget; None: every sample
        of the batch was corrupt (on_data_error=skip)."""
        for step, batch in enumerate(self.loader):
            if self.total and epoch * self.loader.num_batches + step >= self.total:
                return
            yield step, None if batch is None else _to_device(batch, self.ctx.device)

    def step(self, epoch: int, step: int, terms: dict, batch: dict) -> None:
        """After the backward: the schedule, the optimiser step, the epoch's sums. A loss that is
        not finite fails the job (the optimiser does not step on it)."""
        values = {k: float(v.detach()) for k, v in terms.items()}
        if not math.isfinite(sum(values.values())):
            raise FloatingPointError(
                f"job {self.job.id}: the loss is not finite at epoch {epoch} step {step} "
                f"({', '.join(f'{k}={v:g}' for k, v in values.items())}); lower optim.lr"
            )
        set_lr(self.optimizer, self.model.cfg.optim, epoch, step, self.loader.num_batches)
        self.optimizer.step()
        for k, v in values.items():
            self.sums[k] += v
        self.n += 1
        self.samples += len(batch["label"])

    def end_epoch(self, epoch: int) -> None:
        """GPA, the scores between epochs, the epoch's row and its checkpoint."""
        model, job, settings, ctx = self.model, self.job, self.settings, self.ctx
        model.on_epoch_end(epoch, self.epochs)
        val_accuracy, test = None, {}
        # Scores between epochs draw from no training RNG stream (a DataLoader iterator takes its
        # base seed from the global generator): the trained state is the same with or without.
        with rng_untouched(ctx.device):
            if self.val_view is not None:
                c, n_val, _ = count_correct(model, self.val_view, settings, ctx)
                val_accuracy = 100.0 * c / max(n_val, 1)
            if settings.policy.eval_every_epoch:  # the selection-gap table's data, nothing else
                test = {f"test_{e['target'].subsample}": 100.0 * e["correct"] / max(e["total"], 1)
                        for e in evaluate(model, job, settings, ctx)}  # fmt: skip
            if self.val_view is not None or test:
                model.set_classes(self.view.classnames, self.view.template, self.view.dataset)
        n = max(self.n, 1)
        self.rows.append(
            {
                "job_id": job.id,
                "run_id": settings.run_id,
                "epoch": epoch,
                "lr": self.optimizer.param_groups[0]["lr"],  # at the epoch's last optimiser step
                "loss": sum(self.sums.values()) / n,
                "samples": self.samples * ctx.world_size,
                "seconds": time.perf_counter() - self.tic,
                "val_accuracy": val_accuracy,
                **test,
                **{f"loss_{k}": v / n for k, v in self.sums.items()},
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.rank == 0:
                state = {
                    "model": model.trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "epoch": epoch,
                    "epoch_rows": self.rows,
                    "rng": self.rng_state(),
                }
                torch.save(state, Path(tmp) / STATE_FILE)
            metrics = {k: v for k, v in self.rows[-1].items() if k != "run_id" and v is not None}
            ctx.report({**metrics, "attempt": self.attempt}, tmp if ctx.rank == 0 else None)

    def finish(self) -> None:
        if self.loader.skipped.value:
            log.warning(
                "job %s: skipped %d corrupt training samples",
                self.job.id,
                self.loader.skipped.value,
            )


def train(
    model: PromptedCLIP,
    job: Job,
    settings: RunSettings,
    ctx: WorkerContext,
    rows: list[dict],
) -> list[dict]:
    """Train `model` for the job's epochs, resuming from the context's last checkpoint. Appends
    one metrics row per epoch to `rows` as it goes (the caller keeps them if training fails)."""
    tr = Training(model, job, settings, ctx, rows)
    if tr.resumed_rng is not None:  # continue the streams, not a fresh seed: exact resumes
        set_global_rng_state(tr.resumed_rng, ctx.device)
    step_module = _Step(_ddp(_LossModule(model), ctx), settings.how.compile)
    for epoch in range(tr.start, tr.epochs):
        tr.begin_epoch(epoch)
        for step, batch in tr.batches(epoch):
            if batch is None:
                continue
            with autocast(ctx.device, settings.bf16):
                terms = step_module(batch, epoch, tr.epochs)
            loss = sum(terms.values())
            tr.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            tr.step(epoch, step, terms, batch)
        tr.end_epoch(epoch)
    tr.finish()
    return rows
