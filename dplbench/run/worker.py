"""The per-worker train / evaluate loop of one job. No Ray in here: the launcher calls it inside a
Ray Train worker, and it runs in-process too (local mode, tests) with a `LocalContext`.

Rank 0 writes the job's checkpoints (trainable state + optimiser, one per epoch, through the
context), the final trainable state (`R/checkpoints/<job_id>/final.pt`, what xd/dg evaluation jobs
load) and the result rows (results/store.py). Every rank trains on its share of the stream and
evaluates its share of each test split; counts are summed over ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dpl.methods import build_method
from dpl.methods.base import PromptedCLIP
from dpl.optim import build_optimizer
from dpl.schedules import set_lr
from dplbench.atomic import write_atomic
from dplbench.data.epochs import train_loader
from dplbench.data.shards import all_reduce_counts, eval_loader
from dplbench.data.transforms import ViewConfig
from dplbench.data.view import DatasetView
from dplbench.errors import UserError
from dplbench.plan.jobs import Job
from dplbench.results import provenance, store
from dplbench.run.context import WorkerContext
from dplbench.run.settings import RunSettings

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


class _LossModule(nn.Module):
    """DDP syncs gradients of what its forward computed: route the loss through forward."""

    def __init__(self, model: PromptedCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict, epoch: int, epochs: int) -> dict[str, torch.Tensor]:
        return self.model.losses(batch, epoch, epochs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def final_state_path(results_root: str, job_id: str) -> Path:
    return Path(results_root) / "checkpoints" / job_id / "final.pt"


def load_final_state(model: PromptedCLIP, job: Job, settings: RunSettings, source: str) -> None:
    """Load the trainable state that job `source` left after training."""
    path = final_state_path(settings.results, source)
    if not path.is_file():
        raise UserError(
            f"job {job.id} evaluates the prompts of job {source}, but {path} is missing; "
            "run the suite's training jobs first (dplbench run --resume)"
        )
    device = next(model.parameters()).device
    model.load_trainable_state(torch.load(path, map_location=device, weights_only=True))


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def _autocast(device: torch.device, bf16: bool | None):
    use = device.type == "cuda" if bf16 is None else bf16
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def _image_size(model: PromptedCLIP) -> int:
    size = model.clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def _ddp(module: nn.Module, ctx: WorkerContext) -> nn.Module:
    dist = torch.distributed
    if ctx.world_size > 1 and dist.is_available() and dist.is_initialized():
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    return module


def train(model: PromptedCLIP, job: Job, settings: RunSettings, ctx: WorkerContext) -> list[dict]:
    """Train `model` for the job's epochs (resuming from the context's last checkpoint); returns
    per-epoch metric rows."""
    cfg = model.cfg
    t = job.train
    view = DatasetView.open(
        settings.data, t.dataset, "train", t.shots, t.seed, t.subsample, t.imbalance
    )
    model.set_classes(view.classnames, view.template)
    views = ViewConfig(_image_size(model), cfg.train_view, with_clean=cfg.frozen_view == "clean")
    loader = train_loader(
        view,
        cfg.optim.batch_size,
        views,
        settings.loader_workers,
        ctx.rank,
        ctx.world_size,
        seed=job.seed,
        on_error=settings.on_data_error,
        last_batch=cfg.optim.last_batch,
    )
    val_view = (
        DatasetView.open(settings.data, t.dataset, "val", t.shots, t.seed, t.subsample, None)
        if settings.val_each_epoch
        else None
    )
    optimizer = build_optimizer(model)
    start = 0
    ckpt = ctx.latest_checkpoint()
    if ckpt:
        state = torch.load(Path(ckpt) / STATE_FILE, map_location=ctx.device, weights_only=True)
        model.load_trainable_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"]) + 1
        log.info("job %s: resuming after epoch %d", job.id, start - 1)
    step_module = _ddp(_LossModule(model), ctx)
    epochs = cfg.optim.epochs
    rows = []
    for epoch in range(start, epochs):
        if settings.fail_job:  # testing hook: "<job id prefix>[@<epoch>]"
            prefix, _, at = settings.fail_job.partition("@")
            if job.id.startswith(prefix) and epoch == int(at or 0):
                raise RuntimeError(f"job {job.id}: failure injected at epoch {epoch}")
        loader.set_epoch(epoch)
        model.train()
        tic, sums, n, samples = time.perf_counter(), defaultdict(float), 0, 0
        for step, batch in enumerate(loader):
            if batch is None:  # every sample of the batch was corrupt (on_data_error=skip)
                continue
            batch = _to_device(batch, ctx.device)
            with _autocast(ctx.device, settings.bf16):
                terms = step_module(batch, epoch, epochs)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            set_lr(optimizer, cfg.optim, epoch, step, loader.num_batches)
            optimizer.step()
            for k, v in terms.items():
                sums[k] += float(v.detach())
            n += 1
            samples += len(batch["label"])
        model.on_epoch_end(epoch, epochs)
        val_accuracy = None
        if settings.val_each_epoch:
            c, n_val = count_correct(model, val_view, settings, ctx)
            model.set_classes(view.classnames, view.template)
            val_accuracy = 100.0 * c / max(n_val, 1)
        row = {
            "job_id": job.id,
            "run_id": settings.run_id,
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],  # at the epoch's last optimiser step
            "loss": sum(sums.values()) / max(n, 1),
            "samples": samples * ctx.world_size,
            "seconds": time.perf_counter() - tic,
            "val_accuracy": val_accuracy,
            **{f"loss_{k}": v / max(n, 1) for k, v in sums.items()},
        }
        rows.append(row)
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.rank == 0:
                torch.save(
                    {
                        "model": model.trainable_state(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                    },
                    Path(tmp) / STATE_FILE,
                )
            ctx.report(
                {k: v for k, v in row.items() if k != "run_id" and v is not None},
                tmp if ctx.rank == 0 else None,
            )
    if loader.skipped.value:
        log.warning("job %s: skipped %d corrupt training samples", job.id, loader.skipped.value)
    return rows


def count_correct(
    model: PromptedCLIP, view: DatasetView, settings: RunSettings, ctx: WorkerContext
) -> tuple[int, int]:
    """(correct, total) of `model` on this view, each rank reading its share, summed over ranks."""
    model.set_classes(view.classnames, view.template)
    was_training = model.training
    model.eval()
    loader = eval_loader(
        view,
        settings.eval_batch_size,
        ViewConfig(_image_size(model), "test"),
        settings.loader_workers,
        ctx.rank,
        ctx.world_size,
        on_error=settings.on_data_error,
    )
    correct = total = 0
    with torch.no_grad(), _autocast(ctx.device, settings.bf16):
        for batch in loader:
            pred = model.logits(batch["image"].to(ctx.device)).argmax(-1).cpu()
            correct += int((pred == batch["label"]).sum())
            total += len(pred)
    if loader.skipped.value:
        log.warning(
            "%s/%s: skipped %d corrupt samples", view.dataset, view.split, loader.skipped.value
        )
    model.train(was_training)
    return all_reduce_counts(correct, total)


def evaluate(
    model: PromptedCLIP, job: Job, settings: RunSettings, ctx: WorkerContext
) -> list[dict]:
    """(correct, total) per evaluation target, summed over ranks."""
    out = []
    t = job.train
    for target in job.evals:
        view = DatasetView.open(
            settings.data, target.dataset, target.split, t.shots, t.seed, target.subsample
        )
        tic = time.perf_counter()
        correct, total = count_correct(model, view, settings, ctx)
        out.append(
            {
                "target": target,
                "correct": correct,
                "total": total,
                "seconds": time.perf_counter() - tic,
            }
        )
    return out


def build_model(job: Job, ctx: WorkerContext) -> PromptedCLIP:
    # Same seed on every rank while building: random-init weights (tests, smoke) and prompt inits
    # must be identical across DDP ranks. Then a per-rank seed for dropout draws and augmentation.
    seed_everything(job.seed)
    model = build_method(job.config).to(ctx.device)
    seed_everything(job.seed * 1000 + ctx.rank)
    return model


def final_val_accuracy(job: Job, settings: RunSettings, ctx: WorkerContext) -> float:
    """Validation accuracy of the job's final prompts (for a sweep job resumed after its last
    epoch: its epochs ran in an earlier, interrupted sweep, so none reported now)."""
    model = build_model(job, ctx)
    load_final_state(model, job, settings, job.id)
    t = job.train
    view = DatasetView.open(settings.data, t.dataset, "val", t.shots, t.seed, t.subsample, None)
    correct, total = count_correct(model, view, settings, ctx)
    return 100.0 * correct / max(total, 1)


def run_job(job: Job, settings: RunSettings, ctx: WorkerContext) -> list[dict]:
    """Train (or load) and evaluate one job; rank 0 writes its rows. Returns the result rows."""
    wall = time.perf_counter()
    model = build_model(job, ctx)
    epoch_rows: list[dict] = []
    train_s = 0.0
    if job.trains:
        tic = time.perf_counter()
        epoch_rows = train(model, job, settings, ctx)
        train_s = time.perf_counter() - tic
        if ctx.rank == 0:
            state = model.trainable_state()
            write_atomic(
                final_state_path(settings.results, job.id), lambda tmp: torch.save(state, tmp)
            )
    elif job.source is not None and model.trainable:
        load_final_state(model, job, settings, job.source)
    evals = evaluate(model, job, settings, ctx)
    if ctx.rank != 0:
        return []
    now = datetime.now(timezone.utc)
    eval_s = sum(e["seconds"] for e in evals)
    rows = [
        store.result_row(
            job_id=job.id,
            run_id=settings.run_id,
            suite=settings.suite,
            protocol=job.protocol,
            method=job.method,
            dataset=e["target"].dataset,
            train_dataset=job.train.dataset,
            subsample=e["target"].subsample,
            split=e["target"].split,
            shots=job.train.shots,
            seed=job.seed,
            imbalance=job.train.imbalance,
            accuracy=100.0 * e["correct"] / max(e["total"], 1),
            correct=e["correct"],
            total=e["total"],
            epochs=job.epochs if job.trains else 0,
            source_job_id=job.source or job.id,
            config=_json(job.describe()),
            params=_json(job.params),
            code_version=provenance.code_version(),
            versions=provenance.library_versions(),
            hardware=provenance.hardware(ctx.device, ctx.world_size),
            node=getattr(ctx, "node", None),
            num_workers=ctx.world_size,
            train_seconds=train_s,
            eval_seconds=eval_s,
            wall_seconds=time.perf_counter() - wall,
            created_at=now,
        )
        for e in evals
    ]
    store.write_epochs(settings.results, settings.suite, job.method, epoch_rows)
    store.write_rows(settings.results, rows)
    return rows


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
