"""Residual Entropy Regularization (docs/dpl.md §4) and its λ schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rer_lambda(epoch: int, epochs: int, lambda0: float = 0.1, fixed: bool = False) -> float:
    """λ_e = λ0 − λ0 (1 + 10 e/E)^(−0.75), e 0-based: 0 at epoch 0, rising towards ~0.08."""
    if fixed:
        return lambda0
    return lambda0 - lambda0 * (1 + 10 * epoch / epochs) ** -0.75


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_y p log(p + 1e-5) over classes, mean over the batch."""
    p = logits.float().softmax(-1)
    return -(p * torch.log(p + 1e-5)).sum(-1).mean()


def residual_entropies(
    f_d: torch.Tensor,
    f_o: torch.Tensor,
    t_d: torch.Tensor,
    t_o: torch.Tensor,
    lam: float,
    logit_scale: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H_t, H_v) for learnable/frozen image features [B,E] and class text features [C,E].

    Residuals z = (x^d − λ x^o)/(1−λ) of the normalised features (not re-normalised); text residuals
    are scored by frozen image features, image residuals against frozen text features."""
    f_d, f_o, t_d, t_o = (F.normalize(x.float(), dim=-1) for x in (f_d, f_o, t_d, t_o))
    z_t = (t_d - lam * t_o) / (1 - lam)  # [C,E]
    z_v = (f_d - lam * f_o) / (1 - lam)  # [B,E]
    return entropy(logit_scale * f_o @ z_t.T), entropy(logit_scale * z_v @ t_o.T)
