"""Each member's state in a model of K members (dpl/members.py): its slice of every trainable
tensor, in the format of a run trained alone (so checkpoints of either load into the other), and
PromptSRC's Gaussian prompt aggregation (GPA), per member."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dpl.members import member_slice


class MemberState:
    """Mixed into PromptedCLIP (which provides `cfgs`, `members`, `_gpa_sum`, `_eval_text`)."""

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        if self.members > 1:
            flat = [n for n, p in params.items() if not getattr(p, "member_axis", False)]
            if flat:
                raise ValueError(
                    f"{type(self).__name__}: {flat[0]} has no member axis; a model of "
                    f"{self.members} members needs every trainable tensor per member "
                    "(dpl/members.py member_parameter)"
                )
        return params

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's trainable state as a run alone's: prompts, LoRA, MAG, meta-nets (+ GPA
        running sums), each without the member axis."""
        params = self._trainable()
        state = {n: member_slice(p, k).detach().clone() for n, p in params.items()}
        state.update(
            {f"_gpa.{n}": member_slice(t, k, params[n]).clone() for n, t in self._gpa_sum.items()}
        )
        return state

    def load_member_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        params = self._trainable()
        gpa = {n[len("_gpa.") :]: v for n, v in state.items() if n.startswith("_gpa.")}
        own = {n: v for n, v in state.items() if not n.startswith("_gpa.")}
        if set(own) != set(params):
            missing, extra = sorted(set(params) - set(own)), sorted(set(own) - set(params))
            raise ValueError(
                f"trainable state does not fit {self.cfg.method}: missing {missing[:5]}, "
                f"unexpected {extra[:5]}"
            )
        with torch.no_grad():
            for n, p in params.items():
                member_slice(p, k).copy_(own[n])
        for n, v in gpa.items():
            acc = self._gpa_sum.setdefault(n, torch.zeros_like(params[n], dtype=v.dtype))
            member_slice(acc, k, params[n]).copy_(v.to(acc.device))
        self._eval_text = None

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A run alone's trainable state (one member)."""
        self._one("trainable_state")
        return self.member_state(0)

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a run alone's state (or a member's) into every member of this model."""
        for k in range(self.members):
            self.load_member_state(k, state)

    def _one(self, what: str) -> None:
        if self.members != 1:
            raise RuntimeError(f"{what}() is one member's; this model has {self.members}")

    def on_epoch_end(self, epoch: int, epochs: int, members: Sequence[int] | None = None) -> None:
        """PromptSRC's GPA for the members that finished `epoch` (default: all): accumulate this
        epoch's prompts with a Gaussian weight over epochs (each member's mean and std); after the
        last epoch the prompts become the weighted mean."""
        members = range(self.members) if members is None else members
        params = self._trainable()
        for k in members:
            g = self.cfgs[k].gpa
            if not g.enabled:
                continue
            weights = [math.exp(-0.5 * ((e - g.mean) / g.std) ** 2) for e in range(1, epochs + 1)]
            total = sum(weights)
            # Underflow for runs far shorter than the mean: put all weight on the last epoch.
            w = weights[epoch] / total if total > 0 else float(epoch == epochs - 1)
            for n, p in params.items():
                acc = self._gpa_sum.setdefault(n, torch.zeros_like(p, dtype=torch.float32))
                member_slice(acc, k, p).add_(w * member_slice(p, k).detach().float())
            if epoch == epochs - 1:
                with torch.no_grad():
                    for n, p in params.items():
                        acc = member_slice(self._gpa_sum[n], k, p)
                        member_slice(p, k).copy_(acc.to(p.dtype))
                        acc.zero_()
                self._eval_text = None
        if all(not t.any() for t in self._gpa_sum.values()):
            self._gpa_sum = {}
