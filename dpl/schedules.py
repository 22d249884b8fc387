"""Learning-rate schedules as the releases step them: a pure function of (epoch, step in epoch).

- `dassl` (CoOp, CoCoOp, KgCoOp, IVLP, MaPLe, PromptSRC): Dassl's `ConstantWarmupScheduler` around
  `CosineAnnealingLR(T_max=E)`, stepped once per epoch (every trainer calls `update_lr()` at the
  epoch's last batch; Dassl.pytorch dassl/optim/lr_scheduler.py). Epochs k < W run at the constant
  warm-up lr; epoch k >= W at lr * 1/2 (1 + cos(pi (k - W) / E)). It never reaches 0.
- `dpl_release` (DroPLe train_drople.py `get_cosine_schedule_with_warmup`): a LambdaLR with one
  warm-up step and `max(E, 20) + 1` steps in all, floored per group at its min lr (1e-5 for the
  prompts, max(lora_lr / lr * 1e-5, 5e-6) for LoRA). It is stepped once in epoch 0 before batch
  `len(loader) // 10` and once after every epoch, so epoch e >= 1 runs at step e + 1.

- `cosine_iterations` (CLIP-LoRA lora.py): `CosineAnnealingLR(T_max=iterations, eta_min=min_lr)`
  stepped after every optimiser step, no warm-up: step t runs at
  min_lr + (lr - min_lr) * 1/2 (1 + cos(pi t / iterations)).

All give the lr of every optimiser step; dpl/optim.py `MemberOptimizer.set_lr` writes each
member's.
"""

from __future__ import annotations

import math

from dpl.config import OptimConfig

SCHEDULES = ("dassl", "dpl_release", "cosine_iterations")
# DroPLe train_drople.py: min_lrs = [1e-5, max(args.lora_lr / args.lr * 1e-5, 5e-6)].
DPL_RELEASE_MIN_LR = 1e-5
DPL_RELEASE_MIN_LORA_LR = 5e-6
# DroPLe train_drople.py: num_training_steps = max(args.max_epochs, 20) + 1.
DPL_RELEASE_MIN_STEPS = 20


def dassl_lr(base_lr: float, epoch: int, cfg: OptimConfig) -> float:
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return base_lr * 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


def dpl_release_step(epoch: int, step: int, steps_per_epoch: int) -> int:
    """The release's scheduler step in force at (epoch, batch index)."""
    if epoch == 0:
        return 0 if step < steps_per_epoch // 10 else 1
    return epoch + 1


def dpl_release_lr(base_lr: float, min_lr: float, scheduler_step: int, epochs: int) -> float:
    if scheduler_step < 1:  # the one warm-up step: max(min/base, 0/1)
        return base_lr * max(min_lr / base_lr, 0.0)
    progress = (scheduler_step - 1) / max(epochs, DPL_RELEASE_MIN_STEPS)
    return base_lr * max(min_lr / base_lr, 0.5 * (1 + math.cos(math.pi * progress)))


def group_lr(
    cfg: OptimConfig, group: str, epoch: int, step: int = 0, steps_per_epoch: int = 1
) -> float:
    """The lr of param group `group` ("prompts" | "lora") at batch `step` of `epoch`."""
    base = cfg.lr_lora if group == "lora" else cfg.lr
    if cfg.schedule == "dassl":
        return dassl_lr(base, epoch, cfg)
    if cfg.schedule == "dpl_release":
        floor = DPL_RELEASE_MIN_LR
        if group == "lora":
            floor = max(cfg.lr_lora / cfg.lr * DPL_RELEASE_MIN_LR, DPL_RELEASE_MIN_LORA_LR)
        return dpl_release_lr(
            base, floor, dpl_release_step(epoch, step, steps_per_epoch), cfg.epochs
        )
    if cfg.schedule == "cosine_iterations":
        t = epoch * steps_per_epoch + step
        cos = 0.5 * (1 + math.cos(math.pi * t / cfg.iterations))
        return cfg.min_lr + (base - cfg.min_lr) * cos
    raise ValueError(f"optim.schedule={cfg.schedule!r}: choose one of {SCHEDULES}")
