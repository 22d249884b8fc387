"""The optimiser of K members' stacked parameters (dpl/members.py): AdamW or SGD as torch's own
(single-tensor) implementations compute them, once over every member, with each member's
learning rate, weight decay, betas or momentum as a per-member coefficient and its own step
count (members may resume at different steps, or sit a step out). The lr schedules are
dpl/schedules.py; `set_lr` writes each member's rates for the coming step.

Coefficients are computed per member on the host in double and rounded once to fp32, as a Python
scalar is when torch's optimiser passes it to an op, so one member steps bit for bit as torch's
optimiser steps a run alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from dpl.config import OptimConfig
from dpl.members import coefficient, member_slice, member_view
from dpl.schedules import group_lr

EPS = 1e-8  # torch.optim.AdamW's eps (the releases keep the default)


class MemberOptimizer:
    def __init__(self, groups: list[dict], cfgs: Sequence[OptimConfig]) -> None:
        """groups: [{"name": "prompts" | "lora", "params": [...]}] (PromptedCLIP.param_groups)."""
        self.cfgs = tuple(cfgs)
        self.kind = self.cfgs[0].name
        self.groups = [{"name": g["name"], "params": list(g["params"])} for g in groups]
        self.steps = [0] * len(self.cfgs)  # optimiser steps each member has taken
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self.lrs = {g["name"]: [self._base(c, g["name"]) for c in self.cfgs] for g in self.groups}

    @staticmethod
    def _base(cfg: OptimConfig, group: str) -> float:
        return cfg.lr_lora if group == "lora" else cfg.lr

    @property
    def members(self) -> int:
        return len(self.cfgs)

    def set_lr(
        self,
        epoch: int,
        step: int | Sequence[int] = 0,
        steps_per_epoch: int | Sequence[int] = 1,
    ) -> None:
        """Each member's rate of every group for the coming step (dpl/schedules.py): the step in
        its epoch and its epoch's length, one for all or one per member."""
        k = self.members
        steps = [step] * k if isinstance(step, int) else list(step)
        lengths = (
            [steps_per_epoch] * k if isinstance(steps_per_epoch, int) else list(steps_per_epoch)
        )
        for g in self.groups:
            self.lrs[g["name"]] = [
                group_lr(c, g["name"], epoch, s, n) for c, s, n in zip(self.cfgs, steps, lengths)
            ]

    def lr(self, k: int) -> float:
        """Member k's rate of its first group (what the epochs table shows)."""
        return self.lrs[self.groups[0]["name"]][k]

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, active: Sequence[bool] | None = None) -> None:
        """One step of the members in `active` (default: all); the others keep their parameters
        and state as they are."""
        active = list(active) if active is not None else [True] * self.members
        for k, on in enumerate(active):
            self.steps[k] += int(on)
        for g in self.groups:
            lrs = self.lrs[g["name"]]
            for p in g["params"]:
                if p.grad is None:
                    continue
                before = None if all(active) else self._copy(p)
                if self.kind == "adamw":
                    self._adamw(p, lrs)
                else:
                    self._sgd(p, lrs, active)
                if before is not None:
                    self._restore(p, before, active)

    def _c(self, values: Sequence[float], x: torch.Tensor) -> torch.Tensor | float:
        """Per-member values against x [K,...]: one Python number when every member has the same
        (then each op is torch's own, with the same rounding), else a [K,1,...] coefficient."""
        if len(set(values)) == 1:
            return float(values[0])
        return member_view(coefficient(values, x), x)

    def _adamw(self, p: torch.Tensor, lrs: list[float]) -> None:
        st = self.state.setdefault(p, {})
        if not st:
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        m, v, grad, cfgs = st["exp_avg"], st["exp_avg_sq"], p.grad, self.cfgs
        b1 = [c.betas[0] for c in cfgs]
        b2 = [c.betas[1] for c in cfgs]
        p.mul_(self._c([1 - lr * c.weight_decay for lr, c in zip(lrs, cfgs)], p))
        m.lerp_(grad, self._c([1 - b for b in b1], p))
        v.mul_(self._c(b2, p))
        scale = self._c([1 - b for b in b2], p)
        if isinstance(scale, float):
            v.addcmul_(grad, grad, value=scale)
        else:
            v.addcmul_(scale * grad, grad)
        steps = [max(s, 1) for s in self.steps]  # a member yet to step is restored after
        step_size = self._c([-lr / (1 - b**s) for lr, b, s in zip(lrs, b1, steps)], p)
        bc2_sqrt = self._c([math.sqrt(1 - b**s) for b, s in zip(b2, steps)], p)
        denom = (v.sqrt() / bc2_sqrt).add_(EPS)
        if isinstance(step_size, float):
            p.addcdiv_(m, denom, value=step_size)
        else:
            p.addcdiv_(step_size * m, denom)

    def _sgd(self, p: torch.Tensor, lrs: list[float], active: list[bool]) -> None:
        cfgs, grad = self.cfgs, p.grad
        if any(c.weight_decay for c in cfgs):
            wd = self._c([c.weight_decay for c in cfgs], p)
            grad = grad.add(p, alpha=wd) if isinstance(wd, float) else grad + wd * p
        if any(c.momentum for c in cfgs):
            st = self.state.setdefault(p, {})
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = torch.clone(grad).detach()
            else:
                # a member's first step starts its buffer at the gradient (torch's rule)
                first = [s == 1 and on for s, on in zip(self.steps, active)]
                buf.mul_(self._c([c.momentum for c in cfgs], p)).add_(grad)
                if any(first):
                    buf.copy_(torch.where(member_view(coefficient(first, p), p).bool(), grad, buf))
            grad = buf
        lr = self._c([-lr for lr in lrs], p)
        if isinstance(lr, float):
            p.add_(grad, alpha=lr)
        else:
            p.add_(lr * grad)

    def _copy(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "param": p.detach().clone(),
            **{k: v.clone() for k, v in self.state.get(p, {}).items()},
        }

    def _restore(self, p: torch.Tensor, before: dict, active: list[bool]) -> None:
        keep = ~member_view(coefficient(active, p), p).bool()
        p.copy_(torch.where(keep, before["param"], p))
        for name, value in self.state.get(p, {}).items():
            if name in before:
                value.copy_(torch.where(keep, before[name], value))
            else:  # state born this step: a member that sat it out has none yet (zeros)
                value.masked_fill_(keep.expand_as(value), 0.0)

    # ---- a member's state, in torch's optimiser state_dict format -----------------------------

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.groups for p in g["params"]]

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """Member k's state as torch's AdamW / SGD state_dict of a run alone."""
        state = {}
        for i, p in enumerate(self._params()):
            st = self.state.get(p)
            if not st or self.steps[k] == 0:
                continue
            entry = {name: member_slice(t, k, p).clone() for name, t in st.items()}
            if self.kind == "adamw":
                entry["step"] = torch.tensor(float(self.steps[k]))
            state[i] = entry
        groups, start = [], 0
        for g in self.groups:
            n = len(g["params"])
            groups.append({"name": g["name"], "lr": self.lrs[g["name"]][k],
                           "params": list(range(start, start + n)), **self._hyper(k)})  # fmt: skip
            start += n
        return {"state": state, "param_groups": groups}

    def _hyper(self, k: int) -> dict[str, Any]:
        c = self.cfgs[k]
        if self.kind == "adamw":
            return {"betas": tuple(c.betas), "eps": EPS, "weight_decay": c.weight_decay}
        return {"momentum": c.momentum, "weight_decay": c.weight_decay}

    def load_member_state_dict(self, k: int, sd: dict[str, Any]) -> None:
        """Member k's state from a state_dict written by `member_state_dict` or by torch's own
        optimiser of a run alone (checkpoints of either kind)."""
        params = self._params()
        steps = 0
        for i, entry in sd.get("state", {}).items():
            p = params[int(i)]
            st = self.state.setdefault(p, {})
            for name, value in entry.items():
                if name == "step":
                    steps = int(float(value))
                    continue
                if name not in st:
                    st[name] = torch.zeros_like(p)
                member_slice(st[name], k, p).copy_(value.to(st[name].device))
        if self.kind == "sgd" and sd.get("state"):
            steps = max(steps, 1)  # SGD keeps no count; a buffer means it has stepped
        self.steps[k] = steps


def build_optimizer(model) -> MemberOptimizer:
    """The optimiser of a model's members (`model.param_groups()`, each member's OptimConfig)."""
    return MemberOptimizer(model.param_groups(), [c.optim for c in model.cfgs])
