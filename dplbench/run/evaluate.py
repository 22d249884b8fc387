"""Evaluation of a model's members on dataset views: every sample counted once across ranks and
loader workers, logits in fp32, corrupt samples raised or skipped and counted (`on_data_error`);
members that share a test split score it in one pass."""

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
from dplbench.run.outcomes import PassRecorder, SampleOutcomes, gather
from dplbench.run.settings import RunSettings

log = logging.getLogger(__name__)


def autocast(device: torch.device, bf16: bool | None):
    use = device.type == "cuda" if bf16 is None else bf16
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def image_size(model: PromptedCLIP) -> int:
    size = model.clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def _pass(model: PromptedCLIP, view: DatasetView, settings: RunSettings, ctx: WorkerContext):
    """One pass over `view`: (correct per member, total, skipped, the pass's recorded
    predictions) of this rank."""
    loader = eval_loader(
        view,
        settings.how.eval_batch_size,
        ViewConfig(image_size(model), "test"),
        settings.how.loader_workers,
        ctx.rank,
        ctx.world_size,
        on_error=settings.policy.on_data_error,
    )
    correct = [0] * model.members
    total = 0
    recorder = PassRecorder(model.members)
    with torch.no_grad(), autocast(ctx.device, settings.bf16):
        for batch in loader:
            pred = model.member_logits(batch["image"].to(ctx.device)).argmax(-1).cpu()  # [K,B]
            hits = (pred == batch["label"][None]).sum(1).tolist()
            correct = [c + h for c, h in zip(correct, hits)]
            total += pred.shape[1]
            recorder.add(batch["key"], batch["label"], pred)
    if loader.skipped.value:
        log.warning(
            "%s/%s: skipped %d corrupt samples", view.dataset, view.split, loader.skipped.value
        )
    return correct, total, loader.skipped.value, recorder


Counts = tuple[int, int, int]  # (correct, total, skipped)


def member_results(
    model: PromptedCLIP,
    views: list[DatasetView],
    settings: RunSettings,
    ctx: WorkerContext,
    outcomes: bool = False,
) -> list[tuple[Counts, SampleOutcomes | None]]:
    """(correct, total, skipped) of each member on its view (one per member), each rank reading
    its share, summed over ranks; `skipped` counts corrupt samples left out
    (on_data_error=skip). With `outcomes`, also each member's per-sample outcomes, gathered
    from every rank in key order (run/outcomes.py). Members that share a view (a test split:
    the same for every seed) are scored in one pass over it, the images read once and run
    through every member's prompts and LoRA at once; a view of fewer members (few-shot val sets
    differ by seed) is one pass too, of which those members' counts are kept."""
    was_training = model.training
    model.set_classes(views[0].classnames, views[0].template, views[0].dataset)
    model.eval()
    out: list[tuple[Counts, SampleOutcomes | None] | None] = [None] * len(views)
    for k, view in enumerate(views):
        if out[k] is not None:
            continue
        correct, total, skipped, recorder = _pass(model, view, settings, ctx)
        for j, other in enumerate(views):
            if out[j] is None and other == view:
                counts = all_reduce_counts(correct[j], total, skipped)
                out[j] = (counts, gather(recorder.member(j)) if outcomes else None)
    model.train(was_training)
    return out


def member_counts(
    model: PromptedCLIP, views: list[DatasetView], settings: RunSettings, ctx: WorkerContext
) -> list[Counts]:
    """(correct, total, skipped) of each member on its view (`member_results` without the
    per-sample outcomes)."""
    return [counts for counts, _ in member_results(model, views, settings, ctx)]


def count_correct(
    model: PromptedCLIP, view: DatasetView, settings: RunSettings, ctx: WorkerContext
) -> tuple[int, int, int]:
    """(correct, total, skipped) of a model of one member on one view."""
    return member_counts(model, [view], settings, ctx)[0]


def evaluate_members(
    model: PromptedCLIP,
    jobs: list[Job],
    settings: RunSettings,
    ctx: WorkerContext,
    outcomes: bool = True,
) -> list[list[dict]]:
    """Per member (job), (correct, total, skipped) and the per-sample outcomes (every rank's, in
    key order) per evaluation target, summed over ranks. The members of a group share their
    targets: one pass over each test split serves them all. `outcomes=False` (per-epoch test
    scores) leaves the outcomes out (None)."""
    out: list[list[dict]] = [[] for _ in jobs]
    for i, target in enumerate(jobs[0].evals):
        views = []
        for job in jobs:
            t = job.train
            views.append(DatasetView.open(
                settings.data, target.dataset, target.split, t.shots, t.seed, target.subsample
            ))  # fmt: skip
        tic = time.perf_counter()
        results = member_results(model, views, settings, ctx, outcomes)
        seconds = time.perf_counter() - tic
        for k, ((correct, total, skipped), outcomes) in enumerate(results):
            out[k].append({"target": jobs[k].evals[i], "correct": correct, "total": total,
                           "skipped": skipped, "seconds": seconds / len(jobs),
                           "outcomes": outcomes})  # fmt: skip
    return out


def evaluate(
    model: PromptedCLIP, job: Job, settings: RunSettings, ctx: WorkerContext
) -> list[dict]:
    """(correct, total) per evaluation target of a model of one member, summed over ranks."""
    return evaluate_members(model, [job], settings, ctx)[0]
