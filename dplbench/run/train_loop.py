"""The training of K jobs on one worker as one model of K members (dpl/members.py); a job trained
alone is K = 1, so every run takes this one loop (no Ray: the contexts report and checkpoint).

Each member keeps what its solo run has: its data (its few-shot set, order and augmentation, read
through the group's one loader pool: data/group.py), its random streams (its draws, wherever it
sits in the group), its optimiser step count and rates, its epoch rows, its checkpoints (its slice,
in a solo run's format, with its epoch rows so far: a restarted worker continues the same
`epochs` table, every epoch once) and its failure: a member whose loss is not finite, whose data
fails or whose injected failure fires is failed alone, the others go on. A member resumed
further than the others waits while they catch up: it sits those steps out (its rows take a
copy of a batch that trains, its draws a scratch stream, its update is discarded), so the step
stays one batched pass. One host read per step (the [K, terms] losses) serves logging and the
finite check.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpl.members import Streams
from dpl.methods.base import PromptedCLIP
from dpl.optim import build_optimizer
from dplbench import storage
from dplbench.data.group import GroupLoader, MemberData
from dplbench.data.transforms import ViewConfig
from dplbench.data.view import DatasetView
from dplbench.plan.jobs import Job
from dplbench.results import store
from dplbench.run import interrupt
from dplbench.run.context import STATE_FILE, WorkerContext
from dplbench.run.evaluate import autocast, evaluate_members, image_size, member_counts
from dplbench.run.settings import RunSettings
from dplbench.run.state_file import StateFileError, load_state

log = logging.getLogger(__name__)


class _LossModule(nn.Module):
    """DDP syncs gradients of what its forward computed: route the loss through forward. Returns
    the [K, terms] tensor; the names stay on the host (`last`)."""

    def __init__(self, model: PromptedCLIP) -> None:
        super().__init__()
        self.model = model
        self.last = None

    def forward(self, batch: dict, epoch: int, epochs: int, streams: Streams) -> torch.Tensor:
        self.last = self.model.member_losses(batch, epoch, epochs, streams)
        return self.last.values


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


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Run a block without moving torch's global streams, Python's or NumPy's (scores between
    epochs; training draws from its members' own streams, but a plug-in may use the global)."""
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


def fail_if_asked(job: Job, settings: RunSettings, epoch: int) -> None:
    """Testing hook, RunSettings.fail_job "<job id prefix>[@<epoch>][:kill]" (a comma list of
    them): raise at that epoch, or (":kill") SIGKILL this worker process there, once per run (a
    marker file says so)."""
    for spec in (settings.fail_job or "").split(","):
        if spec:
            _fail_one(spec, job, settings, epoch)


def _fail_one(spec: str, job: Job, settings: RunSettings, epoch: int) -> None:
    spec, _, how = spec.partition(":")
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


@dataclass
class Member:
    """One job of the group: its context, rows, where it resumes and how its epoch goes."""

    job: Job
    ctx: WorkerContext
    rows: list[dict]
    val_view: DatasetView | None = None
    start: int = 0
    epochs: int = 0
    attempt: int = 0
    error: BaseException | None = None
    sums: dict = field(default_factory=lambda: defaultdict(float))
    n: int = 0
    samples: int = 0
    tic: float = 0.0


class Training:
    """The group's training on one worker: one model of K members, one loader pool, one
    optimiser, each member's streams, resume points and rows (module docstring)."""

    def __init__(
        self,
        model: PromptedCLIP,
        jobs: list[Job],
        settings: RunSettings,
        contexts: list[WorkerContext],
        rows: dict[str, list[dict]],
    ) -> None:
        cfg, ctx = model.cfg, contexts[0]
        self.model, self.settings, self.ctx = model, settings, ctx
        self.members = [Member(j, c, rows[j.id]) for j, c in zip(jobs, contexts)]
        train_views = []
        for m in self.members:
            t = m.job.train
            train_views.append(DatasetView.open(
                settings.data, t.dataset, "train", t.shots, t.seed, t.subsample, t.imbalance
            ))  # fmt: skip
            if settings.val_each_epoch:
                m.val_view = DatasetView.open(
                    settings.data, t.dataset, "val", t.shots, t.seed, t.subsample, None
                )
        self.view = train_views[0]  # every member's classes (a fused group shares its data spec)
        model.set_classes(self.view.classnames, self.view.template, self.view.dataset)
        views = ViewConfig(image_size(model), cfg.train_view, with_clean=cfg.frozen_view == "clean")
        data = [MemberData(v, m.job.seed, (m.job.train, m.job.seed))
                for v, m in zip(train_views, self.members)]  # fmt: skip
        self.loader = GroupLoader(
            data, cfg.optim.batch_size, views, settings.how.loader_workers, ctx.rank,
            ctx.world_size, settings.policy.on_data_error, cfg.optim.last_batch,
        )  # fmt: skip
        self.optimizer = build_optimizer(model)
        # A member's draws: the stream its solo run seeds (job seed, rank), wherever it sits.
        self.streams = Streams.seeded([m.job.seed * 1000 + ctx.rank for m in self.members],
                                      ctx.device)  # fmt: skip
        self.total = cfg.optim.iterations  # a step budget instead of epochs (CLIP-LoRA)
        for k, m in enumerate(self.members):
            nb = self.loader.batches_per_epoch(k)
            m.epochs = math.ceil(self.total / nb) if self.total else cfg.optim.epochs
            m.attempt = _count_attempt(m.job, settings) if ctx.rank == 0 else 0
            self._resume(k, m)

    def _resume(self, k: int, m: Member) -> None:
        ckpt = m.ctx.latest_checkpoint()
        if not ckpt:
            return
        fix = f"delete it (rm {ckpt}) and rerun: job {m.job.id} retrains from scratch"
        state = load_state(ckpt, m.ctx.device, m.job.id, fix)
        try:
            self.model.load_member_state(k, state["model"])
            self.optimizer.load_member_state_dict(k, state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as e:  # not ours, or another method's
            raise StateFileError(f"{ckpt}: does not fit job {m.job.id} ({e}); {fix}") from None
        m.start = int(state["epoch"]) + 1
        # A restart within this run continues its epochs table; a --resume run (another run id)
        # records only what it trains, the earlier run's file keeps the rest. An earlier run that
        # was stopped before it could write that file (Ctrl-C, a killed driver) left its epochs
        # here only: written now, as that run's, so every epoch appears once.
        rows = state.get("epoch_rows", [])
        m.rows += [r for r in rows if r["run_id"] == self.settings.run_id]
        earlier = [r for r in rows if r["run_id"] != self.settings.run_id]
        if earlier and m.ctx.rank == 0:
            store.keep_epochs(self.settings.root, self.settings.suite, m.job.method, earlier)
        if state.get("rng") is not None:  # its streams where they stopped: exact resumes
            self.streams.load(k, state["rng"])
        log.info("job %s: resuming after epoch %d", m.job.id, m.start - 1)

    # ---- the loop ----------------------------------------------------------------------------

    def train(self) -> dict[str, BaseException]:
        """Every member's epochs; returns the members that failed and why."""
        self.loss_module = _LossModule(self.model)
        step_module = _Step(_ddp(self.loss_module, self.ctx), self.settings.how.compile)
        live = [m for m in self.members if m.error is None]
        first = min((m.start for m in live), default=0)
        for epoch in range(first, max((m.epochs for m in live), default=0)):
            going = [k for k, m in enumerate(self.members)
                     if m.error is None and m.start <= epoch < m.epochs]  # fmt: skip
            for k in going:
                self._begin(k, epoch)
            going = [k for k in going if self.members[k].error is None]
            if not going:
                continue
            self.loader.set_epoch(epoch, going)
            self.model.train()
            steps = dict.fromkeys(going, 0)
            try:
                for batches in self.loader.steps(going):
                    interrupt.check()  # Ctrl-C in this process (--no-ray): stop here
                    ready = {}
                    for k, batch in batches.items():
                        step, steps[k] = steps[k], steps[k] + 1
                        nb = self.loader.batches_per_epoch(k)
                        spent = self.total and epoch * nb + step >= self.total
                        if batch is None or spent or self.members[k].error is not None:
                            continue  # every sample corrupt (skip), or the step budget spent
                        ready[k] = (step, _to_device(batch, self.ctx.device))
                    if ready:
                        self._step(epoch, ready, step_module)
            except Exception as e:  # the data of the group fails: every member in it fails
                for k in going:
                    self.members[k].error = self.members[k].error or e
            self._end([k for k in going if self.members[k].error is None], epoch)
        return {m.job.id: m.error for m in self.members if m.error is not None}

    def _begin(self, k: int, epoch: int) -> None:
        m = self.members[k]
        try:
            fail_if_asked(m.job, self.settings, epoch)
        except Exception as e:
            m.error = e
        m.tic, m.sums, m.n, m.samples = time.perf_counter(), defaultdict(float), 0, 0

    def _step(self, epoch: int, ready: dict[int, tuple[int, dict]], step_module: _Step) -> None:
        """One optimiser step of the members in `ready`: their batches (by size: equal sizes
        stack) through one forward of all K members, one backward, one host read."""
        K = len(self.members)
        self.optimizer.zero_grad()
        stepped = []
        by_size: dict[int, list[int]] = defaultdict(list)
        for k, (_, b) in ready.items():
            by_size[len(b["label"])].append(k)
        for ks in by_size.values():
            stepped += self._forward_backward(epoch, ks, ready, step_module)
        if not stepped:
            return
        steps = [ready[k][0] if k in ready else 0 for k in range(K)]
        nbs = [self.loader.batches_per_epoch(k) for k in range(K)]
        self.optimizer.set_lr(epoch, steps, nbs)
        self.optimizer.step([k in stepped for k in range(K)])

    def _forward_backward(self, epoch, ks, ready, step_module) -> list[int]:
        K = len(self.members)
        fill = ready[ks[0]][1]  # rows of members that sit the step out: a copy of a real batch
        parts = [ready[k][1] if k in ks else fill for k in range(K)]
        batch = {
            "image": torch.cat([b["image"] for b in parts]),
            "label": torch.cat([b["label"] for b in parts]),
            "key": [key for b in parts for key in b["key"]],
        }
        if "clean" in fill:
            batch["clean"] = torch.cat([b["clean"] for b in parts])
        streams = self.streams if len(ks) == K else self.streams.only(ks)
        with autocast(self.ctx.device, self.settings.bf16):
            values = step_module(batch, epoch, self.members[ks[0]].epochs, streams)
        terms = self.loss_module.last
        host = values.detach().float().cpu().tolist()  # the step's one host read
        ok = []
        for k in ks:
            mine = {n: host[k][i] for i, n in enumerate(terms.names) if n in terms.present[k]}
            if math.isfinite(sum(mine.values())):
                ok.append(k)
                m = self.members[k]
                for name, v in mine.items():
                    m.sums[name] += v
                m.n += 1
                m.samples += len(ready[k][1]["label"])
            else:
                self.members[k].error = FloatingPointError(
                    f"job {self.members[k].job.id}: the loss is not finite at epoch {epoch} step "
                    f"{ready[k][0]} ({', '.join(f'{n}={v:g}' for n, v in mine.items())}); "
                    "lower optim.lr"
                )
        if ok:
            keep = torch.tensor([k in ok for k in range(K)], device=values.device)
            torch.where(keep, values.sum(1), 0.0).sum().backward()
        return ok

    def _end(self, ks: list[int], epoch: int) -> None:
        """GPA, the scores between epochs, each member's epoch row and checkpoint."""
        if not ks:
            return
        model, settings, ctx = self.model, self.settings, self.ctx
        model.on_epoch_end(epoch, self.members[ks[0]].epochs, ks)
        val, tests = {}, {}
        # Scores between epochs draw from no training stream.
        with rng_untouched(ctx.device):
            if settings.val_each_epoch:
                views = [m.val_view for m in self.members]
                counts = member_counts(model, views, settings, ctx)
                val = {k: 100.0 * counts[k][0] / max(counts[k][1], 1) for k in ks}
            if settings.policy.eval_every_epoch:  # the selection-gap table's data, nothing else
                evals = evaluate_members(
                    model, [m.job for m in self.members], settings, ctx, outcomes=False
                )
                tests = {k: {f"test_{e['target'].subsample}": 100.0 * e["correct"] / max(e["total"], 1)
                             for e in evals[k]} for k in ks}  # fmt: skip
            if val or tests:
                model.set_classes(self.view.classnames, self.view.template, self.view.dataset)
        for k in ks:
            self._record(k, epoch, val.get(k), tests.get(k, {}))

    def _record(self, k: int, epoch: int, val: float | None, test: dict) -> None:
        m, ctx = self.members[k], self.members[k].ctx
        n = max(m.n, 1)
        m.rows.append(
            {
                "job_id": m.job.id,
                "run_id": self.settings.run_id,
                "epoch": epoch,
                "lr": self.optimizer.lr(k),  # at the epoch's last optimiser step
                "loss": sum(m.sums.values()) / n,
                "samples": m.samples * ctx.world_size,
                "seconds": time.perf_counter() - m.tic,
                "val_accuracy": val,
                **test,
                **{f"loss_{name}": v / n for name, v in m.sums.items()},
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.rank == 0:
                state = {
                    "job_id": m.job.id,
                    "model": self.model.member_state(k),
                    "optimizer": self.optimizer.member_state_dict(k),
                    "epoch": epoch,
                    "epoch_rows": m.rows,
                    "rng": self.streams.state(k),
                }
                torch.save(state, Path(tmp) / STATE_FILE)
            metrics = {n_: v for n_, v in m.rows[-1].items() if n_ != "run_id" and v is not None}
            ctx.report({**metrics, "attempt": m.attempt}, tmp if ctx.rank == 0 else None)

    def finish(self) -> None:
        if self.loader.skipped.value:
            log.warning("skipped %d corrupt training samples", self.loader.skipped.value)
