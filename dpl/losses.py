"""A training step's named, weighted loss terms from its features (docs/dpl.md §5, §6); the
total is their sum. For K members (dpl/members.py) at once: each term is [K], each member's
weights its own; `Terms` holds them as one [K, terms] tensor (one host read per step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dpl.mag import alignment_loss
from dpl.residual_entropy import rer_lambda, residual_entropies


@dataclass
class Terms:
    """The named terms of K members: values [K,T]; present[k]: the names member k reports (its
    solo run's: a term whose weight is zero for it is not its term, and adds zero)."""

    names: tuple[str, ...]
    values: torch.Tensor  # [K,T]
    present: list[tuple[str, ...]]

    def total(self) -> torch.Tensor:
        """Each member's loss [K]."""
        return self.values.sum(1)

    def member(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's terms as its solo run names them (0-dim tensors)."""
        return {n: self.values[k, i] for i, n in enumerate(self.names) if n in self.present[k]}


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [K,N,E] @ b[K,M,E]ᵀ (or b [M,E] shared) -> [K,N,M]."""
    if a.shape[0] == 1:
        return (a[0] @ (b[0] if b.dim() == 3 else b).T)[None]
    return a @ (b.transpose(1, 2) if b.dim() == 3 else b.T)


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Per member mean over all but the member axis: [K,...] -> [K]."""
    return x.reshape(x.shape[0], -1).mean(1)


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[0] == 1:
        return F.cross_entropy(logits[0], labels[0])[None]
    k, b, c = logits.shape
    return (
        F.cross_entropy(logits.reshape(k * b, c), labels.reshape(-1), reduction="none")
        .view(k, b)
        .mean(1)
    )


def loss_terms(
    model: Any,
    batch: dict,
    t_d: torch.Tensor,
    f_d: torch.Tensor,
    f_o: torch.Tensor | None,
    hook: Any,
    epoch: int,
    epochs: int,
) -> Terms:
    """model: the PromptedCLIP the features came from (its members' configs, logit scale, frozen
    text); t_d [K·C,E] and f_d [K·B,E] its learnable-branch features (not normalised); f_o [K·B,E]
    the frozen branch's image features (normalised; None when no term needs them); hook: the
    step's IWTD / MAG hook (its captured MAG aggregates). batch["label"] is [K·B]."""
    cfgs, k = model.cfgs, model.members
    labels = batch["label"].view(k, -1)
    t_dn = F.normalize(t_d.float(), dim=-1).view(k, -1, t_d.shape[-1])  # [K,C,E]
    f_dn = F.normalize(f_d.float(), dim=-1).view(k, -1, f_d.shape[-1])  # [K,B,E]
    scale = model.logit_scale  # [K]
    logits = _mm(scale.view(-1, 1, 1) * f_dn, t_dn)  # [K,B,C]
    terms: dict[str, torch.Tensor] = {"ce": _ce(logits, labels)}
    weights: dict[str, list[float]] = {"ce": [c.loss.ce for c in cfgs]}

    def add(name: str, weight: list[float], value) -> None:
        if any(weight):
            weights[name] = weight
            terms[name] = value() if callable(value) else value

    t_o = model.classes.frozen_text  # [C,E]
    add("text_l1", [c.loss.text_l1 for c in cfgs], lambda: _mean((t_dn - t_o).abs()))
    add("kg_cos", [c.loss.kg_cos for c in cfgs],
        lambda: 1 - F.cosine_similarity(t_dn, t_o, dim=-1).mean(-1))  # fmt: skip
    if f_o is not None:
        f_o = f_o.view(k, -1, f_o.shape[-1])
        add("image_l1", [c.loss.image_l1 for c in cfgs], lambda: _mean((f_dn - f_o).abs()))

        def kl() -> torch.Tensor:
            frozen = _mm(scale.view(-1, 1, 1) * f_o, t_o)
            div = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(frozen, -1),
                           reduction="none", log_target=True)  # fmt: skip
            return div.reshape(k, -1).sum(1) / logits[0].numel()

        add("kl", [c.loss.kl for c in cfgs], kl)
        if model.cfg.rer.enabled:
            lam = [rer_lambda(epoch, epochs, c.rer.lambda0, c.rer.fixed_lambda) for c in cfgs]
            h_t, h_v = residual_entropies(
                f_d.view_as(f_dn), f_o, t_d.view_as(t_dn), t_o, lam, scale
            )
            weights["rer"] = [-c.rer.weight for c in cfgs]
            terms["rer"] = h_t + h_v
    if model.cfg.mag.enabled:
        weights["mag"] = [c.mag.weight for c in cfgs]
        terms["mag"] = alignment_loss(hook.captured["vision"], hook.captured["text"], k)
    names = tuple(terms)
    w = torch.tensor([weights[n] for n in names], dtype=torch.float32, device=t_d.device).T
    values = w * torch.stack([terms[n] for n in names], 1)  # [K,T]
    present = [
        tuple(n for n in names if n in ("ce", "rer", "mag") or weights[n][i]) for i in range(k)
    ]
    return Terms(names, values, present)
