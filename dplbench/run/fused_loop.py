"""A fused group on one worker (plan/fusion.py): its jobs built on one frozen CLIP as their solo runs
build them, trained together as one batched model (dpl/fused.py), then each evaluated and recorded
as its solo run would be, with its own rows, epoch rows, checkpoints and final state.

Each member keeps its own `Training` (run/train_loop.py: data, optimiser, schedule, checkpoints,
epoch rows) and its own random streams; one step is one forward over every member's batch, the sum
of their losses, one backward and each member's optimiser step. A member whose loss is not finite,
whose data fails or whose injected failure fires is failed alone (its epochs so far and its log
written, as a solo failure is); the others go on. A process killed mid-group resumes every member
from its own newest checkpoint: members behind catch up while those ahead wait.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from dpl.fused import FusedRuns
from dplbench.plan.jobs import Job
from dplbench.run.context import WorkerContext
from dplbench.run.evaluate import autocast
from dplbench.run.failures import JobFailed
from dplbench.run.settings import RunSettings
from dplbench.run.train_loop import Training
from dplbench.run.worker import build_model, finish_job, job_failed, save_final_state

log = logging.getLogger(__name__)


def _oom(jobs: list[Job], e: BaseException) -> BaseException:
    if not isinstance(e, torch.cuda.OutOfMemoryError):
        return e
    return RuntimeError(
        f"a fused group of {len(jobs)} jobs ran out of GPU memory ({e}); lower --fuse (now "
        f"{len(jobs)}) or optim.batch_size"
    )


def run_group(
    jobs: list[Job], settings: RunSettings, contexts: list[WorkerContext]
) -> dict[str, list[dict] | JobFailed]:
    """Train the group's jobs together and record each; returns per job its result rows, or the
    JobFailed that ended it."""
    wall = time.perf_counter()
    out: dict[str, list[dict] | JobFailed] = {}
    rows: dict[str, list[dict]] = {j.id: [] for j in jobs}
    ctx_of = dict(zip((j.id for j in jobs), contexts))
    # Data and augmentation do not depend on the loader workers (data/epochs.py): the group
    # shares this worker's loader processes among its members.
    how = settings.how
    shared = replace(settings, how=replace(how, loader_workers=how.loader_workers // len(jobs)))
    live: list[tuple[Job, Training]] = []
    for job in jobs:
        try:
            model = build_model(job, settings, ctx_of[job.id])
            live.append((job, Training(model, job, shared, ctx_of[job.id], rows[job.id])))
        except Exception as e:
            out[job.id] = job_failed(job, settings, ctx_of[job.id], e, rows[job.id])
    if live:
        device = contexts[0].device
        seeds = [j.seed * 1000 + ctx_of[j.id].rank for j, _ in live]
        runs = FusedRuns([t.model for _, t in live], seeds, device)
        for (_, tr), rng in zip(live, runs.rngs):
            if tr.resumed_rng is not None:  # a resumed member draws on where it stopped
                rng.load(tr.resumed_rng)
            tr.rng_state = rng.state
        tic = time.perf_counter()
        errors = train_group(runs, live, settings)
        train_s = time.perf_counter() - tic
        for job, tr in live:
            ctx = ctx_of[job.id]
            if job.id in errors:
                out[job.id] = job_failed(job, settings, ctx, errors[job.id], rows[job.id])
                continue
            others = tuple(j.id for j, _ in live if j.id != job.id)
            try:
                save_final_state(tr.model, job, settings, ctx)
                out[job.id] = finish_job(
                    tr.model, job, settings, ctx, rows[job.id], train_s, wall, others
                )
            except Exception as e:
                out[job.id] = job_failed(job, settings, ctx, e, rows[job.id])
    return out


def train_group(
    runs: FusedRuns, live: list[tuple[Job, Training]], settings: RunSettings
) -> dict[str, BaseException]:
    """The epochs of every member, stepped together; returns the members that failed and why."""
    errors: dict[str, BaseException] = {}
    trainings = [t for _, t in live]
    epochs = [t.epochs for t in trainings]
    device = trainings[0].ctx.device
    for epoch in range(min(t.start for t in trainings), max(epochs)):
        going = {}  # member index -> its epoch's batches
        for k, (job, tr) in enumerate(live):
            if job.id in errors or not tr.start <= epoch < tr.epochs:
                continue
            try:
                tr.begin_epoch(epoch)
                going[k] = tr.batches(epoch)
            except Exception as e:
                errors[job.id] = e
        while going:
            batches: list[dict | None] = [None] * len(live)
            steps: dict[int, int] = {}
            for k in list(going):
                try:
                    steps[k], batches[k] = next(going[k])
                except StopIteration:
                    del going[k]
                except Exception as e:
                    errors[live[k][0].id] = e
                    del going[k]
            if not any(b is not None for b in batches):
                continue
            try:
                with autocast(device, settings.bf16):
                    terms = runs.losses(batches, epoch, epochs)
                losses = {k: sum(t.values()) for k, t in enumerate(terms) if t is not None}
                for k in losses:
                    trainings[k].optimizer.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
            except Exception as e:  # the shared step: every member in it fails
                for k, batch in enumerate(batches):
                    if batch is not None:
                        errors[live[k][0].id] = _oom([j for j, _ in live], e)
                        going.pop(k, None)
                continue
            for k in losses:
                try:
                    trainings[k].step(epoch, steps[k], terms[k], batches[k])
                except Exception as e:  # a loss that is not finite fails its member alone
                    errors[live[k][0].id] = e
                    going.pop(k, None)
        for job, tr in live:
            if job.id in errors or not tr.start <= epoch < tr.epochs:
                continue
            try:
                tr.end_epoch(epoch)
            except Exception as e:
                errors[job.id] = e
    for job, tr in live:
        if job.id not in errors:
            tr.finish()
    return errors
