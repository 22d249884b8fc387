"""The optimiser of a method's `OptimConfig` (docs/dpl.md §5, §6); its lr schedule is dpl/schedules.py."""

from __future__ import annotations

import torch

from dpl.methods.base import PromptedCLIP


def build_optimizer(model: PromptedCLIP) -> torch.optim.Optimizer:
    cfg = model.cfg.optim
    groups = model.param_groups()
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
