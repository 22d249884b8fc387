"""Residual Entropy Regularization (docs/dpl.md §4) and its λ schedule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def rer_lambda(epoch: int, epochs: int, lambda0: float = 0.1, fixed: bool = False) -> float:
    """λ_e = λ0 − λ0 (1 + 10 e/E)^(−0.75), e 0-based: 0 at epoch 0, rising towards ~0.08."""
    if fixed:
        return lambda0
    return lambda0 - lambda0 * (1 + 10 * epoch / epochs) ** -0.75


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_y p log(p + 1e-5) over classes, mean over the batch: logits [K,B,C] -> [K]."""
    p = logits.float().softmax(-1)
    return -(p * torch.log(p + 1e-5)).sum(-1).mean(-1)


def _per_member(values: Sequence[float], like: torch.Tensor) -> torch.Tensor | float:
    """One value per member as [K,1,1] (one member: the Python value, as a scalar op takes it)."""
    if len(values) == 1:
        return values[0]
    return torch.tensor(list(values), dtype=torch.float32, device=like.device).view(-1, 1, 1)


def residual_entropies(
    f_d: torch.Tensor,
    f_o: torch.Tensor,
    t_d: torch.Tensor,
    t_o: torch.Tensor,
    lam: Sequence[float],
    logit_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H_t, H_v) per member [K] for learnable/frozen image features [K,B,E], learnable class
    text features [K,C,E], frozen ones [C,E], each member's λ and logit scale [K].

    Residuals z = (x^d − λ x^o)/(1−λ) of the normalised features (not re-normalised); text residuals
    are scored by frozen image features, image residuals against frozen text features."""
    f_d, f_o, t_d, t_o = (F.normalize(x.float(), dim=-1) for x in (f_d, f_o, t_d, t_o))
    lam_k, keep = _per_member(lam, f_d), _per_member([1 - v for v in lam], f_d)
    z_t = (t_d - lam_k * t_o) / keep  # [K,C,E]
    z_v = (f_d - lam_k * f_o) / keep  # [K,B,E]
    s = logit_scale.view(-1, 1, 1)
    return entropy(s * f_o @ z_t.transpose(1, 2)), entropy(s * z_v @ t_o.T)
