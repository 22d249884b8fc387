"""One model of K members (dpl/members.py) trains each member as the model of that member alone
trains it: per step losses and final states of every fusable method, members that differ in seed
and in every value plan/fusion.py calls neutral; a member's numbers do not depend on the group's
size, order or company; the stacked optimiser steps as torch's own."""

import pytest
import torch

from dpl.config import OptimConfig
from dpl.members import Streams
from dpl.methods import build_method, method_config
from dpl.optim import MemberOptimizer, build_optimizer
from dplbench.plan.fusion import NEUTRAL
from dplbench.run.worker import frozen_clip
from tests.conftest import llm_overrides, tiny

FUSABLE = ("coop", "cocoop", "kgcoop", "ivlp", "maple", "promptsrc", "clip_lora", "dpl", "llamp",
           "dpl-release")  # fmt: skip
NAMES = ["dog", "cat", "red car", "sunflower"]
STEPS, EPOCHS = 3, 2


def _batch(seed: int, n: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, 32, 32, generator=g)
    return {
        "image": image,
        "clean": image + 0.1,
        "label": torch.randint(len(NAMES), (n,), generator=g),
        "key": [f"s{seed}-{i}" for i in range(n)],
    }


def _stack(batches: list[dict]) -> dict:
    return {
        "image": torch.cat([b["image"] for b in batches]),
        "clean": torch.cat([b["clean"] for b in batches]),
        "label": torch.cat([b["label"] for b in batches]),
        "key": [k for b in batches for k in b["key"]],
    }


# Per member: a seed and a value of every neutral key (plan/fusion.py NEUTRAL), all different.
VARIED = [
    {"optim": {"lr": 2e-3, "lr_lora": 1e-3, "weight_decay": 5e-4, "momentum": 0.9,
               "betas": [0.9, 0.999]},
     "loss": {"ce": 1.0, "text_l1": 25.0, "image_l1": 10.0, "kl": 2.5, "kg_cos": 8.0},
     "iwtd": {"p_min": 0.1, "p_max": 0.5, "sigma": 0.03},
     "rer": {"weight": 0.05, "lambda0": 0.1, "fixed_lambda": False},
     "mag": {"weight": 30.0}, "logit_scale": {"init_log": 4.6}},
    {"optim": {"lr": 5e-3, "lr_lora": 3e-3, "weight_decay": 1e-2, "momentum": 0.5,
               "betas": [0.8, 0.99]},
     "loss": {"ce": 0.5, "text_l1": 10.0, "image_l1": 5.0, "kl": 1.0, "kg_cos": 2.0},
     "iwtd": {"p_min": 0.0, "p_max": 0.7, "sigma": 0.1},
     "rer": {"weight": 0.2, "lambda0": 0.3, "fixed_lambda": True},
     "mag": {"weight": 10.0}, "logit_scale": {"init_log": 3.0}},
    {"optim": {"lr": 1e-3, "lr_lora": 2e-5, "weight_decay": 0.0, "momentum": 0.0,
               "betas": [0.95, 0.9]},
     "loss": {"ce": 2.0, "text_l1": 0.0, "image_l1": 1.0, "kl": 0.5, "kg_cos": 1.0},
     "iwtd": {"p_min": 0.2, "p_max": 0.3, "sigma": 0.01},
     "rer": {"weight": 0.0, "lambda0": 0.05, "fixed_lambda": False},
     "mag": {"weight": 0.0}, "logit_scale": {"init_log": 4.0}},
]  # fmt: skip
SEEDS = (3, 1, 2)


def _config(method: str, k: int):
    """Member k's config: the method's (tiny) with member k's neutral values where they apply."""
    base = method_config(method, tiny(llm_overrides(method)))
    over = {"optim": dict(VARIED[k]["optim"]), "loss": dict(VARIED[k]["loss"])}
    if not base.loss.kg_cos:  # only KgCoOp weighs kg_cos; others keep theirs at zero
        over["loss"]["kg_cos"] = 0.0
    for section in ("iwtd", "rer", "mag"):
        over[section] = VARIED[k][section]
    if base.logit_scale.learnable:
        over["logit_scale"] = VARIED[k]["logit_scale"]
    return method_config(method, tiny({**llm_overrides(method), **over}))


def _build(method: str, members: list[int]):
    cfgs = [_config(method, k) for k in members]
    clip = frozen_clip(cfgs[0].backbone)
    gens = [torch.Generator().manual_seed(SEEDS[k]) for k in members]
    model = build_method(cfgs if len(cfgs) > 1 else cfgs[0], clip, gens)
    model.set_classes(NAMES)
    return model.train()


def _train(method: str, members: list[int]) -> tuple[list[list[float]], object]:
    """Train the members (their own batches and streams) for STEPS steps; per step each member's
    loss, and the model."""
    model = _build(method, members)
    opt = build_optimizer(model)
    streams = Streams.seeded([SEEDS[k] * 1000 for k in members], torch.device("cpu"))
    losses = []
    for step in range(STEPS):
        batch = _stack([_batch(100 * SEEDS[k] + step) for k in members])
        epoch = step * EPOCHS // STEPS
        terms = model.member_losses(batch, epoch, EPOCHS, streams)
        opt.zero_grad()
        terms.total().sum().backward()
        opt.set_lr(epoch, step, STEPS)
        opt.step()
        losses.append(terms.total().tolist())
    return losses, model


def _assert_member_equals_solo(method: str, fused_members: list[int], rel: float = 1e-5):
    losses, model = _train(method, fused_members)
    for i, k in enumerate(fused_members):
        solo_losses, solo = _train(method, [k])
        fused = [step[i] for step in losses]
        alone = [step[0] for step in solo_losses]
        assert fused == pytest.approx(alone, rel=rel), (method, k)
        mine, theirs = model.member_state(i), solo.member_state(0)
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.allclose(mine[name], theirs[name], rtol=rel, atol=1e-6), (method, k, name)


@pytest.mark.parametrize("method", FUSABLE)
def test_each_member_trains_as_it_does_alone(method):
    """Members differ in seed and in every neutral value (those the method reads)."""
    _assert_member_equals_solo(method, [0, 1, 2])


def test_the_neutral_keys_are_all_varied():
    """VARIED sets every key plan/fusion.py calls neutral except GPA's Gaussian (PromptSRC's:
    its own test) and the warm-up / floor rates (schedule constants of their recipes)."""
    left = {"gpa": {"mean", "std"}, "optim": {"warmup_lr", "min_lr"}}
    for section, keys in NEUTRAL.items():
        varied = {k for v in VARIED for k in v.get(section, {})}
        assert set(keys) - varied <= left.get(section, set()), section


def test_a_member_is_the_same_in_any_group_at_any_place():
    """Member 1 in a group of 2 at the end and of 5 at the front: the same draws and data, so
    the same numbers up to the rounding of batched products over 2 or 5 members (CPU GEMMs of
    another batch count may round the last bit differently: ~1e-7 relative after 3 steps)."""
    two, model2 = _train("dpl", [0, 1])
    five, model5 = _train("dpl", [1, 2, 0, 2, 0])
    assert [s[1] for s in two] == pytest.approx([s[0] for s in five], rel=1e-6)
    assert two[0][1] == five[0][0]  # the first step's forward: bit for bit
    a, b = model2.member_state(1), model5.member_state(0)
    assert all(torch.allclose(a[n], b[n], rtol=1e-6, atol=1e-7) for n in a)


def test_gpa_aggregates_each_member_with_its_own_gaussian():
    """PromptSRC's GPA: member k's prompts after the last epoch are its own weighted mean."""
    cfgs = [method_config("promptsrc", tiny({"gpa": {"mean": m, "std": s}}))
            for m, s in ((1.0, 1.0), (2.0, 0.5))]  # fmt: skip
    clip = frozen_clip(cfgs[0].backbone)
    fused = build_method(cfgs, clip, [torch.Generator().manual_seed(s) for s in (1, 2)])
    solos = [
        build_method(c, clip, [torch.Generator().manual_seed(s)]) for c, s in zip(cfgs, (1, 2))
    ]
    for epoch in range(3):
        with torch.no_grad():
            for k, solo in enumerate(solos):
                for (_, p), (_, q) in zip(fused.named_parameters(), solo.named_parameters()):
                    if p.requires_grad:
                        delta = torch.full_like(q[0], 0.1 * (epoch + 1) * (k + 1))
                        p[k] += delta
                        q[0] += delta
        fused.on_epoch_end(epoch, 3)
        for solo in solos:
            solo.on_epoch_end(epoch, 3)
    for k, solo in enumerate(solos):
        a, b = fused.member_state(k), solo.member_state(0)
        assert all(torch.allclose(a[n], b[n]) for n in a)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_one_member_steps_as_torchs_own_optimiser_bit_for_bit(kind):
    cfg = OptimConfig(name=kind, lr=0.0123, weight_decay=5e-4, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    start = torch.randn(1, 6, 5, generator=g)
    stacked = torch.nn.Parameter(start.clone())
    mine = MemberOptimizer([{"name": "prompts", "params": [stacked]}], [cfg])
    alone = torch.nn.Parameter(start[0].clone())
    theirs = (torch.optim.AdamW([alone], lr=cfg.lr, weight_decay=cfg.weight_decay)
              if kind == "adamw" else
              torch.optim.SGD([alone], lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay))  # fmt: skip
    for _ in range(5):
        grad = torch.randn(1, 6, 5, generator=g)
        stacked.grad, alone.grad = grad.clone(), grad[0].clone()
        mine.step()
        theirs.step()
    assert torch.equal(stacked[0], alone)
    # its state, in torch's own format, loads into a fresh one and continues the same
    state = mine.member_state_dict(0)
    assert state["state"][0].keys() == theirs.state_dict()["state"][0].keys()


def test_a_member_that_sits_out_keeps_its_parameters_state_and_count():
    cfgs = [OptimConfig(name="adamw", lr=0.1), OptimConfig(name="adamw", lr=0.2)]
    p = torch.nn.Parameter(torch.ones(2, 3))
    opt = MemberOptimizer([{"name": "prompts", "params": [p]}], cfgs)
    p.grad = torch.ones(2, 3)
    opt.step()
    before, m_before = p[1].detach().clone(), opt.state[p]["exp_avg"][1].clone()
    p.grad = torch.full((2, 3), float("nan"))
    opt.step([True, False])
    assert torch.equal(p[1], before) and torch.equal(opt.state[p]["exp_avg"][1], m_before)
    assert opt.steps == [2, 1]


def _direct_attend(self, x, modality, valid):
    """The bridge before re-association (the reference): every token projected to d first."""
    k = self.members
    proj = self.proj[modality]
    z = proj(x.reshape(k, -1, x.shape[-1])).reshape(*x.shape[:2], -1)  # [K·N,S,d]
    tokens = self.tokens.repeat_interleave(x.shape[0] // k, 0)  # [K·N,M,d]
    logits = self.tau * torch.einsum("nmd,nsd->nms", tokens.to(z.dtype), z).float()
    if modality != "text" or not self.all_text:
        logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    self._z = z
    return logits.softmax(-1).to(z.dtype)


def _direct_aggregate(self, attn, x, modality, rows):
    out = attn @ self._z  # every row's aggregate, A (x Wᵀ + b)
    return out if rows is None else out[rows]


@pytest.mark.parametrize("members", [[0], [0, 1, 2]])
def test_mag_reassociated_equals_the_direct_formula(members, monkeypatch):
    from dpl.mag import MAGBridge

    def mag_terms(direct: bool) -> torch.Tensor:
        model = _build("dpl", members)
        if direct:
            monkeypatch.setattr(MAGBridge, "attend", _direct_attend)
            monkeypatch.setattr(MAGBridge, "aggregate", _direct_aggregate)
        streams = Streams.seeded([SEEDS[k] * 1000 for k in members], torch.device("cpu"))
        batch = _stack([_batch(100 * SEEDS[k]) for k in members])
        terms = model.member_losses(batch, 0, EPOCHS, streams)
        monkeypatch.undo()
        return terms.values[:, terms.names.index("mag")].detach()

    ours, reference = mag_terms(False), mag_terms(True)
    assert (ours != 0).any()
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)


def test_a_checkpoint_of_a_run_alone_before_the_member_axis_loads_into_a_member():
    """Checkpoints written before the member axis: a run alone's trainable state (its tensors,
    no member axis) and torch's own AdamW state_dict. Loaded into member 1 of three, the member
    steps on as that run would have with torch's optimiser."""
    cfg = method_config("dpl", tiny())
    solo = build_method(cfg, frozen_clip(cfg.backbone), [torch.Generator().manual_seed(5)])
    names = [n for g in solo.param_groups() for n, p in solo.named_parameters()
             if any(p is q for q in g["params"])]  # fmt: skip
    state = solo.member_state(0)
    old = {n: torch.nn.Parameter(state[n].clone()) for n in names}
    groups = [{"params": [old[n] for n, p in solo.named_parameters()
                          if any(p is q for q in g["params"])], "lr": 0.01} for g in solo.param_groups()]  # fmt: skip
    theirs = torch.optim.AdamW(groups, lr=0.01, weight_decay=5e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        for p in old.values():
            p.grad = torch.randn(p.shape, generator=g)
        theirs.step()
    checkpoint = {"model": {n: p.detach().clone() for n, p in old.items()},
                  "optimizer": theirs.state_dict()}  # fmt: skip

    group = _build("dpl", [0, 0, 0])
    opt = MemberOptimizer(group.param_groups(), [OptimConfig(name="adamw", lr=0.01,
                                                             lr_lora=0.01, weight_decay=5e-5)] * 3)  # fmt: skip
    group.load_member_state(1, checkpoint["model"])
    opt.load_member_state_dict(1, checkpoint["optimizer"])
    assert opt.steps[1] == 2
    params = dict(group.named_parameters())
    for n, p in old.items():
        p.grad = torch.randn(p.shape, generator=g)
        params[n].grad = torch.zeros_like(params[n])
        params[n].grad[1] = p.grad
    theirs.step()
    opt.step([False, True, False])
    for n, p in old.items():
        torch.testing.assert_close(params[n][1], p.detach(), rtol=1e-6, atol=1e-7)
