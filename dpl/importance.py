"""Token importance for IWTD (docs/dpl.md §3): S_self, S_cls, S_cross, their mean, the p mapping.

Every score is L1-normalised over each sample's content tokens (all valid tokens except the global
one) and is zero elsewhere. Shapes: attention A [B,H,S,S] (post-softmax, masks included), MAG
attention [B,M,S], masks [B,S] bool.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dpl.config import IMPORTANCE_SCORES  # noqa: F401  (the scores this module computes)


def _normalise(score: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    score = score.float().masked_fill(~content, 0.0)
    return score / score.sum(-1, keepdim=True).clamp_min(1e-12)


def self_score(attn: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """S_self(j) = mean_h max_{k≠j, k content} A[h,j,k]: the strongest attention j pays another."""
    S = attn.shape[-1]
    eye = torch.eye(S, dtype=torch.bool, device=attn.device)
    keys = content[:, None, None, :] & ~eye  # [B,1,S,S]; A >= 0, so 0 is a neutral fill for max
    return _normalise(attn.masked_fill(~keys, 0.0).amax(-1).mean(1), content)


def cls_score(
    attn: torch.Tensor, global_index: torch.Tensor, content: torch.Tensor
) -> torch.Tensor:
    """S_cls(j) = mean_h A[h,g,j]: how much the global token attends to j."""
    rows = attn[torch.arange(attn.shape[0], device=attn.device), :, global_index]  # [B,H,S]
    return _normalise(rows.mean(1), content)


def cross_score(mag_attn: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """S_cross(j) = max_m softmax_j(τ<L_m, W X_j>); the softmax (over all tokens) is the MAG
    bridge's attention, the global token is excluded by the content mask."""
    return _normalise(mag_attn.amax(1), content)


def uniform_score(content: torch.Tensor) -> torch.Tensor:
    """All content tokens equally important: IWTD degenerates to plain token dropout at p_max."""
    return _normalise(content.float(), content)


def combine(scores: list[torch.Tensor]) -> torch.Tensor:
    """I(j) = the mean of the enabled scores."""
    return torch.stack(scores).mean(0)


def importance(
    names: tuple[str, ...], scores: Mapping[str, torch.Tensor], content: torch.Tensor
) -> tuple[tuple[str, ...], torch.Tensor]:
    """(the scores used, I): the mean of the enabled scores (`names`) among those computed
    (`scores`; S_cross needs the MAG bridge), or all content tokens alike for ("uniform",)."""
    if names == ("uniform",):
        return names, uniform_score(content)
    used = tuple(n for n in names if n in scores)
    return used, combine([scores[n] for n in used])


def drop_probability(
    importance: torch.Tensor,
    content: torch.Tensor,
    p_min: torch.Tensor | float,
    p_max: torch.Tensor | float,
    p_span: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """p_j = p_max − ŝ_j (p_max − p_min), ŝ the per-sample min-max scaled importance over content
    tokens (ŝ = 0 where max = min). The most important token gets p_min. Zero off content. Rates
    are one value or one per sample ([B,1]); `p_span` is p_max − p_min when computed apart (on
    the host in double, as for a single value)."""
    if p_span is None:
        p_span = p_max - p_min
    lo = importance.masked_fill(~content, float("inf")).amin(-1, keepdim=True)
    hi = importance.masked_fill(~content, float("-inf")).amax(-1, keepdim=True)
    span = hi - lo
    s_hat = torch.where(span > 0, (importance - lo) / span.clamp_min(1e-12), 0.0)
    p = p_max - s_hat * p_span
    return p.masked_fill(~content, 0.0)
