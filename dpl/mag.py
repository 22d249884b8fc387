"""Multimodal Alignment Guidance (docs/dpl.md §4): the bridge behind S_cross and the alignment loss.

M shared learnable tokens L [M,d] attend over each modality's layer tokens through a per-modality
linear map W: att = softmax_j(τ <L_m, W X_j>) (no 1/sqrt(d)). The same attention aggregates
W X into M tokens per sample; the loss pulls each image's aggregate towards its class's text one.
One bridge per member (dpl/members.py): L [K,M,d], W [K,d,D], b [K,d].

Re-associated, so that no token is projected to d (FUSION.md: the bridge was half a DPL step):
the logits are τ·(x·(L W)ᵀ + L b), and since each attention row sums to one, an aggregate is
(A x) Wᵀ + b, computed only for the rows the loss reads (the text side: the labels' classes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dpl.config import MAGConfig
from dpl.members import Gen, StackedLinear, by_member, member_parameter, rows_of


class MAGBridge(nn.Module):
    def __init__(
        self, vision_width: int, text_width: int, cfg: MAGConfig, gens: Sequence[Gen] = (None,)
    ) -> None:
        super().__init__()
        self.tau = cfg.tau
        self.all_text = cfg.text_tokens == "all"
        self.tokens = member_parameter(torch.empty(len(gens), cfg.tokens, cfg.dim))  # [K,M,d]
        with torch.no_grad():
            for k, g in enumerate(gens):
                nn.init.kaiming_uniform_(self.tokens[k], a=math.sqrt(5), generator=g)
        self.proj = nn.ModuleDict(
            {
                "vision": StackedLinear(vision_width, cfg.dim, gens=gens),
                "text": StackedLinear(text_width, cfg.dim, gens=gens),
            }
        )

    @property
    def members(self) -> int:
        return self.tokens.shape[0]

    def attend(self, x: torch.Tensor, modality: str, valid: torch.Tensor) -> torch.Tensor:
        """x [K·N,S,D], valid [K·N,S] -> attention of each member's shared tokens over its rows'
        tokens [K·N,M,S]: softmax_S(τ (x (L W)ᵀ + L b)), in x's dtype."""
        proj = self.proj[modality]
        tokens = self.tokens.to(x.dtype)
        lw = torch.bmm(tokens, proj.weight.to(x.dtype))  # [K,M,D]
        lb = torch.bmm(tokens, proj.bias.to(x.dtype)[..., None])  # [K,M,1]
        xk = by_member(x, self.members)  # [K,N,S,D]
        k, n, s, d = xk.shape
        scores = torch.bmm(xk.reshape(k, n * s, d), lw.transpose(1, 2))  # [K,N·S,M]
        logits = scores.view(k, n, s, -1).transpose(2, 3) + lb[:, None]  # [K,N,M,S]
        logits = self.tau * rows_of(logits).float()
        if modality != "text" or not self.all_text:
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        return logits.softmax(-1).to(x.dtype)

    def aggregate(
        self, attn: torch.Tensor, x: torch.Tensor, modality: str, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """The aggregates (A x) Wᵀ + b of `rows` (indices into the K·N rows, member-major with
        the same count per member; None: all) -> [K·R,M,d]."""
        if rows is not None:
            attn, x = attn[rows], x[rows]
        ax = torch.bmm(attn, x)  # [K·R,M,D]
        proj = self.proj[modality]
        k = self.members
        out = proj(ax.reshape(k, -1, ax.shape[-1]))  # [K,R·M,d]
        return out.reshape(ax.shape[0], ax.shape[1], -1)


def alignment_loss(
    vision: list[torch.Tensor], text: list[torch.Tensor], members: int
) -> torch.Tensor:
    """L_MAG per member [K] = mean over layers, samples and shared tokens of ½[(1−<v̂,m>) +
    (1−<t̂,m>)], m = (v̂+t̂)/2, with v and t [K·B,M,d] per layer: each sample's image aggregate
    and its label's class aggregate."""
    if not vision or len(vision) != len(text):
        raise ValueError("MAG loss needs the same number (>0) of vision and text layers")
    # With unit v̂, t̂ and m = (v̂+t̂)/2: <v̂,m> = <t̂,m> = (1 + <v̂,t̂>)/2, so each term is
    # (1 − cos(v, t))/2. The cosine from three reductions over d (<v,t>, |v|², |t|², each norm
    # clamped at 1e-8 as F.cosine_similarity clamps them): no normalised [L,B,M,d] copies, a
    # sixth of F.cosine_similarity's time with its backward.
    v = torch.stack(vision).float()  # [L,K·B,M,d]
    t = torch.stack(text).float()
    norms = (v * v).sum(-1).sqrt().clamp_min(1e-8) * (t * t).sum(-1).sqrt().clamp_min(1e-8)
    loss = 0.5 * (1 - (v * t).sum(-1) / norms)  # [L,K·B,M]
    return loss.reshape(loss.shape[0], members, -1).transpose(0, 1).reshape(members, -1).mean(1)
