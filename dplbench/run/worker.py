"""Jobs on one worker: build the model (one job, or a fused group's members as one model), train
(or load) it, evaluate, write each job's rows. No Ray in here: the launcher calls it inside a
Ray Train worker or a trial's process, and it runs in-process too (local mode, tests) with a
`LocalContext`.

Rank 0 writes the final trainable state (`R/checkpoints/<job_id>/final.pt`, what xd/dg evaluation
jobs load), the result rows, the per-sample outcomes (gathered from every rank) and the epoch
rows (results/store.py). A job that fails writes its epochs so far (marked failed) and its
traceback (`R/logs/<job>-<run>.log`), then raises
`JobFailed` with one line saying what failed and how to fix it.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import open_clip
import torch

from dpl.backbone import BackboneConfig, load_clip
from dpl.config import MethodConfig
from dpl.methods import build_method, load_plugins
from dpl.methods.base import PromptedCLIP
from dplbench import storage
from dplbench.data.view import DatasetView
from dplbench.errors import UserError
from dplbench.plan.jobs import Job
from dplbench.plan.llm import cache_for
from dplbench.results import provenance, store
from dplbench.results.root import ResultsRoot
from dplbench.run import failures, interrupt
from dplbench.run.context import WorkerContext
from dplbench.run.evaluate import count_correct, evaluate_members
from dplbench.run.settings import RunSettings
from dplbench.run.state_file import StateFileError, load_state
from dplbench.run.train_loop import Training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_final_state(model: PromptedCLIP, root: ResultsRoot, source: str, user: str) -> None:
    """Load the trainable state that job `source` left after training (`user`: who needs it, for
    the error)."""
    path = root.final_state(source)
    if not storage.exists(path):
        raise UserError(
            f"{user} uses the prompts of job {source}, but {path} is missing; "
            "run the suite's training jobs first (dplbench run --resume)"
        )
    device = next(model.parameters()).device
    fix = f"delete it (rm {path}) and rerun with --resume: job {source} trains again"
    state = load_state(path, device, source, fix)
    try:
        model.load_trainable_state(state)
    except ValueError as e:  # another method's state
        raise StateFileError(f"{path}: {e}; {fix}") from None


# Frozen CLIPs of this process, by backbone config (and seed, for random-init ones): a reused
# trial actor builds the next job on the same frozen weights instead of loading them again.
_FROZEN: dict[tuple, open_clip.CLIP] = {}
FROZEN_KEPT = 2


def frozen_clip(cfg: BackboneConfig) -> open_clip.CLIP:
    """The frozen CLIP of a backbone config, built once per process (random weights come from
    cfg.init_seed: the same on every rank, every build and for every seed of a job)."""
    if cfg not in _FROZEN:
        if len(_FROZEN) >= FROZEN_KEPT:
            _FROZEN.clear()
        _FROZEN[cfg] = load_clip(cfg)
    return _FROZEN[cfg]


def job_config(job: Job, settings: RunSettings) -> MethodConfig:
    """The job's config as this run builds it: plug-in methods loaded, and LLM methods pointed
    at this run's LLM cache (checked to hold what the job was planned with)."""
    load_plugins(settings.plugins)
    if job.llm is None:
        return job.config
    cache = cache_for(job, settings.llm_cache)
    # cache_for matched the identity the job was planned with, which names the LLM; llm.model
    # itself may be a folder relative to where the plan was made, not to this worker's folder.
    return replace(job.config, llm=replace(job.config.llm, cache=cache, model=None))


def build_model(jobs: list[Job], settings: RunSettings, ctx: WorkerContext) -> PromptedCLIP:
    """One model of the jobs' members (one job: a run alone). Each member's initial values are
    drawn from its job's seed, the same on every rank (random-init backbones, prompt inits
    must agree across DDP ranks); training draws come from each member's own streams
    (run/train_loop.py)."""
    cfgs = [job_config(j, settings) for j in jobs]
    clip = frozen_clip(cfgs[0].backbone)
    gens = [torch.Generator().manual_seed(j.seed) for j in jobs]
    model = build_method(cfgs if len(cfgs) > 1 else cfgs[0], clip, gens).to(ctx.device)
    # For code outside the model (a plug-in's) that draws from the global streams.
    seed_everything(jobs[0].seed * 1000 + ctx.rank)
    return model


def final_val_accuracy(job: Job, settings: RunSettings, ctx: WorkerContext) -> float:
    """Validation accuracy of the job's final prompts (for a sweep job resumed after its last
    epoch: its epochs ran in an earlier, interrupted sweep, so none reported now)."""
    model = build_model([job], settings, ctx)
    load_final_state(model, settings.root, job.id, f"job {job.id}")
    t = job.train
    view = DatasetView.open(settings.data, t.dataset, "val", t.shots, t.seed, t.subsample, None)
    correct, total, _ = count_correct(model, view, settings, ctx)
    return 100.0 * correct / max(total, 1)


def run_job(job: Job, settings: RunSettings, ctx: WorkerContext) -> list[dict]:
    """Train (or load) and evaluate one job; rank 0 writes its rows. Returns the result rows.
    Any failure is written down (epochs so far, traceback) and raised as `JobFailed`."""
    result = run_group([job], settings, [ctx])[job.id]
    if isinstance(result, failures.JobFailed):
        raise result
    return result


def _oom(jobs: list[Job], e: BaseException) -> BaseException:
    if not isinstance(e, torch.cuda.OutOfMemoryError) or len(jobs) == 1:
        return e
    return RuntimeError(
        f"a fused group of {len(jobs)} jobs ran out of GPU memory ({e}); lower --fuse (now "
        f"{len(jobs)}) or optim.batch_size"
    )


def run_group(
    jobs: list[Job], settings: RunSettings, contexts: list[WorkerContext]
) -> dict[str, list[dict] | failures.JobFailed]:
    """Train (or load) and evaluate jobs as one model of members (a fused group, plan/fusion.py;
    one job: a run alone); each is recorded as its solo run is: its own rows, epoch rows,
    checkpoints and final state, or its failure (its epochs so far and its log) while the others
    go on. Returns per job its result rows, or the JobFailed that ended it."""
    wall = time.perf_counter()
    rows: dict[str, list[dict]] = {j.id: [] for j in jobs}
    ctx_of = dict(zip((j.id for j in jobs), contexts))
    out: dict[str, list[dict] | failures.JobFailed] = {}

    def fail(job: Job, e: BaseException) -> None:
        out[job.id] = job_failed(job, settings, ctx_of[job.id], _oom(jobs, e), rows[job.id])

    try:
        model = build_model(jobs, settings, contexts[0])
        train_s = 0.0
        if jobs[0].trains:
            tic = time.perf_counter()
            training = Training(model, jobs, settings, contexts, rows)
            for job_id, e in training.train().items():
                fail(next(j for j in jobs if j.id == job_id), e)
            training.finish()
            train_s = time.perf_counter() - tic
        elif jobs[0].source is not None and model.trainable:
            (job,) = jobs  # evaluation jobs run alone
            load_final_state(model, settings.root, job.source, f"job {job.id}")
    except interrupt.Interrupted:  # Ctrl-C (--no-ray): epochs so far kept, the rest stops
        for job in jobs:
            if job.id not in out:
                out[job.id] = job_stopped(job, settings, ctx_of[job.id], rows[job.id])
        return out
    except Exception as e:  # what the members share failed: every member fails
        for job in jobs:
            if job.id not in out:
                fail(job, e)
        return out
    alive = [k for k, j in enumerate(jobs) if j.id not in out]
    if not alive:
        return out
    try:
        if jobs[0].trains:
            for k in alive:
                save_final_state(model, k, jobs[k], settings, contexts[k])
        evals = evaluate_members(model, jobs, settings, contexts[0])
    except Exception as e:
        for k in alive:
            fail(jobs[k], e)
        return out
    for k in alive:
        job = jobs[k]
        others = tuple(j.id for j in jobs if j.id != job.id)
        try:
            out[job.id] = record_job(job, settings, contexts[k], rows[job.id], evals[k],
                                     train_s, wall, others)  # fmt: skip
        except Exception as e:
            fail(job, e)
    return out


def job_stopped(
    job: Job, settings: RunSettings, ctx: WorkerContext, epoch_rows: list
) -> failures.JobStopped:
    """An interrupted job: rank 0 writes its epochs so far, marked stopped (--resume continues
    from the last checkpoint, which holds the same epochs: each appears once)."""
    if ctx.rank == 0 and epoch_rows:
        stopped = [{**r, "run_status": "stopped"} for r in epoch_rows]
        store.write_epochs(settings.root, settings.suite, job.method, stopped)
    return failures.JobStopped()


def job_failed(
    job: Job, settings: RunSettings, ctx: WorkerContext, e: BaseException, epoch_rows: list
) -> failures.JobFailed:
    """Write a failure down (its traceback in the job's log, rank 0: its epochs so far, marked
    failed) and say it in one line (what failed, where, how to fix it)."""
    path = settings.root.log(job.id, settings.run_id, ctx.rank)
    header = f"job {job.id} ({job.method} on {job.train.dataset}, seed {job.seed}) failed"
    failures.write_log(path, header, e)
    if ctx.rank == 0 and epoch_rows:
        failed = [{**r, "run_status": "failed"} for r in epoch_rows]
        store.write_epochs(settings.root, settings.suite, job.method, failed)
    line = failures.out_of_memory_line(job.id, e) or failures.one_line(e)
    return failures.JobFailed(line, str(path))


def save_final_state(model: PromptedCLIP, k: int, job: Job, settings: RunSettings, ctx) -> None:
    """Member k's trained state, as a run alone's (`R/checkpoints/<job>/final.pt`)."""
    if ctx.rank == 0:
        state = model.member_state(k)
        storage.write(settings.root.final_state(job.id), lambda tmp: torch.save(state, tmp))


def record_job(
    job: Job,
    settings: RunSettings,
    ctx: WorkerContext,
    epoch_rows: list[dict],
    evals: list[dict],
    train_s: float,
    wall: float,
    fused_with: tuple[str, ...] = (),
) -> list[dict]:
    """On rank 0, write a trained (or loaded) and evaluated job's epoch and result rows."""
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
            skipped=e["skipped"],
            epochs=job.epochs if job.trains else 0,
            source_job_id=job.source or job.id,
            config=_json(job.describe()),
            params=_json(job.params),
            fused_with=",".join(fused_with),
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
    done = [{**r, "run_status": "done"} for r in epoch_rows]
    store.write_epochs(settings.root, settings.suite, job.method, done)
    # Outcomes before rows: a job run whose rows exist has its outcomes too.
    store.write_outcomes(settings.root, settings.suite, job.method, job.id, settings.run_id,
                         [_outcome_split(job, e) for e in evals if e.get("outcomes")])  # fmt: skip
    store.write_rows(settings.root, rows)
    return rows


def _outcome_split(job: Job, evaluated: dict) -> dict:
    """One evaluated split's outcomes as `store.write_outcomes` takes them."""
    target, o = evaluated["target"], evaluated["outcomes"]
    return {"dataset": target.dataset, "subsample": target.subsample, "split": target.split,
            "seed": job.seed, "key": o.key, "label": o.label, "pred": o.pred}  # fmt: skip


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
