"""Learning-rate schedules against references computed here from the releases' rules."""

import math

import pytest
import torch

from dpl.config import OptimConfig
from dpl.optim import MemberOptimizer
from dpl.schedules import group_lr


def dassl_reference(base: float, epochs: int, warmup_lr: float = 1e-5) -> list[float]:
    """Dassl: ConstantWarmupScheduler(1 epoch at warmup_lr) around CosineAnnealingLR(T_max=E),
    stepped once per epoch: run the torch schedulers themselves, epoch by epoch."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(epochs))
    lrs = [warmup_lr]  # epoch 0: the constant warm-up
    for _ in range(1, epochs):  # WARMUP_RECOUNT: the cosine starts counting after the warm-up
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cosine.step()
    return lrs


@pytest.mark.parametrize(("epochs", "lr"), [(2, 0.0026), (5, 0.0035), (20, 0.0025), (200, 0.002)])
def test_dassl_is_per_epoch_warmup_then_cosine(epochs, lr):
    cfg = OptimConfig(lr=lr, epochs=epochs, schedule="dassl", warmup_epochs=1, warmup_lr=1e-5)
    ours = [group_lr(cfg, "prompts", e, step=3, steps_per_epoch=10) for e in range(epochs)]
    assert ours == pytest.approx(dassl_reference(lr, epochs), rel=1e-12)
    # constant within an epoch, never 0; the worked example for MaPLe's B2N recipe (E=5, 0.0035)
    assert group_lr(cfg, "prompts", 2, 0, 10) == group_lr(cfg, "prompts", 2, 9, 10)
    assert ours[-1] > 0
    if epochs == 5:
        assert [round(v, 5) for v in ours] == [1e-5, 0.0035, 0.00317, 0.00229, 0.00121]


def dpl_release_reference(epochs: int, lr: float, lora_lr: float, batches: int):
    """DroPLe train_drople.py: LambdaLR(get_cosine_schedule_lambda_with_warmup) per group, one
    scheduler.step() before batch len//10 of epoch 0 and one after every epoch; the lr of every
    batch of every epoch, per group."""
    min_lrs = [1e-5, max(lora_lr / lr * 1e-5, 5e-6)]
    total = max(epochs, 20) + 1

    def lam(min_lr, base, step):
        if step < 1:
            return max(min_lr / base, float(step) / 1.0)
        progress = (step - 1) / max(1, total - 1)
        return max(min_lr / base, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))

    step, out = 0, []
    for epoch in range(epochs):
        for idx in range(batches):
            if epoch == 0 and idx == batches // 10:
                step += 1
            out.append([b * lam(m, b, step) for m, b in zip(min_lrs, (lr, lora_lr))])
        step += 1
    return out


@pytest.mark.parametrize(("epochs", "batches"), [(20, 25), (5, 37), (3, 4)])
def test_dpl_release_schedule_matches_the_release(epochs, batches):
    cfg = OptimConfig(name="adamw", lr=2e-4, lr_lora=2e-5, epochs=epochs, schedule="dpl_release")
    ours = [
        group_lr(cfg, g, e, i, batches)
        for e in range(epochs)
        for i in range(batches)
        for g in ("prompts", "lora")
    ]
    ref = [v for pair in dpl_release_reference(epochs, 2e-4, 2e-5, batches) for v in pair]
    assert ours == pytest.approx(ref, rel=1e-12)
    if batches >= 10:  # the first 10% of epoch 0 at the floors (< 10 batches: none)
        assert ours[:2] == pytest.approx([1e-5, 5e-6])
    else:
        assert ours[:2] == pytest.approx([2e-4, 2e-5])
    if epochs == 5:  # ImageNet: a truncated cosine that ends at 1.81e-4
        assert ours[-2] == pytest.approx(2e-4 * 0.5 * (1 + math.cos(math.pi * 4 / 20)))


def test_set_lr_writes_each_members_rate_of_each_group():
    """Each member's rate from its own recipe, at its own step of its epoch."""
    one = OptimConfig(name="adamw", lr=2e-4, lr_lora=2e-5, epochs=20, schedule="dpl_release")
    two = OptimConfig(name="adamw", lr=5e-4, lr_lora=1e-5, epochs=20, schedule="dpl_release")
    a, b = torch.nn.Parameter(torch.zeros(2, 1)), torch.nn.Parameter(torch.zeros(2, 1))
    groups = [{"params": [a], "name": "prompts"}, {"params": [b], "name": "lora"}]
    opt = MemberOptimizer(groups, [one, two])
    opt.set_lr(0, [0, 5], 10)
    assert opt.lrs == {
        "prompts": [group_lr(one, "prompts", 0, 0, 10), group_lr(two, "prompts", 0, 5, 10)],
        "lora": [group_lr(one, "lora", 0, 0, 10), group_lr(two, "lora", 0, 5, 10)],
    }
    assert opt.lrs["prompts"][0] != opt.lrs["prompts"][1]
    assert opt.lr(1) == opt.lrs["prompts"][1]
