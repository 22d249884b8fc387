"""LoRA on the q and v projections of open_clip attention (docs/method.md §2).

open_clip packs q, k, v into one `in_proj_weight` [3D, D]; LoRA adds a low-rank delta to the q and v
slices only. In training the delta runs as its own path (LoRA dropout acts on its input); in eval it is
merged into the packed weight so the attention costs what the frozen one does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class QVLoRA(nn.Module):
    def __init__(
        self,
        width: int,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.1,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.scale = alpha / rank
        self.a = nn.Parameter(torch.empty(2, rank, width, **kw))  # [q|v, r, D]
        self.b = nn.Parameter(torch.zeros(2, width, rank, **kw))  # zero: starts as the identity map
        nn.init.kaiming_uniform_(self.a.view(2 * rank, width), a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def delta(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-rank updates of q and v for input h [B,S,D] -> ([B,S,D], [B,S,D])."""
        h = self.dropout(h)
        dq = F.linear(F.linear(h, self.a[0]), self.b[0]) * self.scale
        dv = F.linear(F.linear(h, self.a[1]), self.b[1]) * self.scale
        return dq, dv

    def merged(self, in_proj_weight: torch.Tensor) -> torch.Tensor:
        """in_proj_weight [3D, D] with the q and v deltas added (eval only: no dropout)."""
        dw = (self.b @ self.a) * self.scale  # [2, D, D]
        zero = torch.zeros_like(dw[0])
        return in_proj_weight + torch.cat([dw[0], zero, dw[1]], 0).to(in_proj_weight.dtype)
