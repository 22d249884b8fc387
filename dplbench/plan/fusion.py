"""Fused groups: which jobs can train together in one process as one model of members (dpl/members.py),
a planning fact like the jobs themselves. Pure: reads the jobs only.

Jobs fuse when they agree on everything that fixes a shape: the method, what they train on
(dataset, protocol, shot count, subsample, imbalance), the backbone, the epochs, the batch, and
every other config value, except those that leave shapes alone (`NEUTRAL`: learning rates, loss
weights, IWTD rates and noise scale, the RER weight and λ schedule, the MAG weight, GPA's
Gaussian, the initial logit scale; each member's is a per-member coefficient of the one model) and
the seed (its own few-shot set, prompts, data order and random streams). Each member keeps its own
job id, rows, checkpoints and status: nothing downstream of the run knows it was fused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dpl.methods import METHODS
from dplbench.plan.jobs import Job, work_config

# Config values that may differ inside a fused group (section -> keys).
NEUTRAL: dict[str, tuple[str, ...]] = {
    "optim": ("lr", "lr_lora", "momentum", "betas", "weight_decay", "warmup_lr", "min_lr"),
    "loss": ("ce", "text_l1", "image_l1", "kl", "kg_cos"),
    "iwtd": ("p_min", "p_max", "sigma"),
    "rer": ("weight", "lambda0", "fixed_lambda"),
    "mag": ("weight",),
    "gpa": ("mean", "std"),
    "logit_scale": ("init_log",),
}


@dataclass(frozen=True)
class FusedGroup:
    """Jobs trained together (in plan order); each keeps its own id and results."""

    jobs: tuple[Job, ...]

    @property
    def key(self) -> str:
        """A stable name for the group (its trial): the hash of its members' ids."""
        ids = ",".join(j.id for j in self.jobs)
        return "fused-" + hashlib.sha256(ids.encode()).hexdigest()[:12]


def signature(job: Job) -> str:
    """What must be equal for jobs to fuse (module docstring)."""
    config = work_config(job.config)
    for section, keys in NEUTRAL.items():
        config[section] = {k: v for k, v in config[section].items() if k not in keys}
    train = {k: v for k, v in asdict(job.train).items() if k != "seed"}
    return json.dumps(
        {"method": job.method, "train": train, "config": config, "llm": job.llm},
        sort_keys=True,
        default=str,
    )


def why_solo(job: Job) -> str | None:
    """Why `job` cannot take part in any fused group (None: it can)."""
    if job.source is not None:
        return "evaluation job: it loads a trained state, nothing to train"
    if not job.trains:
        return f"{job.method} trains nothing"
    if not METHODS.get(job.method).fusable:
        return f"{job.method} does not train fused (its registry trait)"
    if job.workers > 1:
        return "DDP jobs (--workers > 1) run solo"
    return None


def fused_groups(jobs: Sequence[Job], k: int) -> tuple[list[FusedGroup | Job], dict[str, str]]:
    """The jobs as fused groups of at most k (and solo jobs), in plan order, and for each job
    that runs solo why. Jobs with one signature are split into groups of as even sizes as k
    allows (7 jobs at k=3: 3, 2, 2)."""
    reasons: dict[str, str] = {}
    if k <= 1:
        return list(jobs), {j.id: "--fuse 1" for j in jobs}
    buckets: dict[str, list[Job]] = {}
    order: list[str | Job] = []
    for j in jobs:
        why = why_solo(j)
        if why is not None:
            reasons[j.id] = why
            order.append(j)
            continue
        sig = signature(j)
        if sig not in buckets:
            buckets[sig] = []
            order.append(sig)
        buckets[sig].append(j)
    units: list[FusedGroup | Job] = []
    for item in order:
        if isinstance(item, Job):
            units.append(item)
            continue
        members = buckets[item]
        if len(members) == 1:
            reasons[members[0].id] = "no other job shares its shapes (method, data, config)"
            units.append(members[0])
            continue
        n_groups = -(-len(members) // k)
        size, extra = divmod(len(members), n_groups)
        start = 0
        for g in range(n_groups):
            end = start + size + (g < extra)
            group = tuple(members[start:end])
            units.append(FusedGroup(group) if len(group) > 1 else group[0])
            if len(group) == 1:
                reasons[group[0].id] = "left over after its group filled"
            start = end
    return units, reasons


def members(unit: FusedGroup | Job) -> tuple[Job, ...]:
    return unit.jobs if isinstance(unit, FusedGroup) else (unit,)
