"""Evaluation of a model on a dataset view: every sample counted once across ranks and loader
workers, logits in fp32, corrupt samples raised or skipped and counted (`on_data_error`)."""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from dpl.methods.base import PromptedCLIP
from dplbench.data.shards import all_reduce_counts, eval_loader
from dplbench.data.transforms import ViewConfig
from dplbench.data.view import DatasetView
from dplbench.plan.jobs import Job
from dplbench.run.context import WorkerContext
from dplbench.run.settings import RunSettings

log = logging.getLogger(__name__)


def autocast(device: torch.device, bf16: bool | None):
    use = device.type == "cuda" if bf16 is None else bf16
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def image_size(model: PromptedCLIP) -> int:
    size = model.clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def count_correct(
    model: PromptedCLIP, view: DatasetView, settings: RunSettings, ctx: WorkerContext
) -> tuple[int, int, int]:
    """(correct, total, skipped) of `model` on this view, each rank reading its share, summed over
    ranks; `skipped` counts corrupt samples left out (on_data_error=skip)."""
    model.set_classes(view.classnames, view.template, view.dataset)
    was_training = model.training
    model.eval()
    loader = eval_loader(
        view,
        settings.how.eval_batch_size,
        ViewConfig(image_size(model), "test"),
        settings.how.loader_workers,
        ctx.rank,
        ctx.world_size,
        on_error=settings.policy.on_data_error,
    )
    correct = total = 0
    with torch.no_grad(), autocast(ctx.device, settings.bf16):
        for batch in loader:
            pred = model.logits(batch["image"].to(ctx.device)).argmax(-1).cpu()
            correct += int((pred == batch["label"]).sum())
            total += len(pred)
    if loader.skipped.value:
        log.warning(
            "%s/%s: skipped %d corrupt samples", view.dataset, view.split, loader.skipped.value
        )
    model.train(was_training)
    return all_reduce_counts(correct, total, loader.skipped.value)


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
        correct, total, skipped = count_correct(model, view, settings, ctx)
        out.append(
            {
                "target": target,
                "correct": correct,
                "total": total,
                "skipped": skipped,
                "seconds": time.perf_counter() - tic,
            }
        )
    return out
