"""Optimiser and learning-rate schedule from a method's `OptimConfig` (METHOD.md §5, §6)."""

from __future__ import annotations

import math

import torch

from dpl.methods.base import PromptedCLIP
from dpl.methods.config import OptimConfig


def build_optimizer(model: PromptedCLIP) -> torch.optim.Optimizer:
    cfg = model.cfg.optim
    groups = model.param_groups()
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """Multiplier of each group's base lr at a global step: a constant warm-up at warmup_lr for
    `warmup_epochs` (as in the Dassl recipes), then a cosine decay to 0 over the remaining steps."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = max(cfg.epochs * steps_per_epoch, 1)
    if step < warmup:
        return cfg.warmup_lr / cfg.lr
    span = max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg)
    )
