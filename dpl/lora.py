"""LoRA on the attention projections of open_clip blocks (docs/dpl.md §2).

open_clip packs q, k, v into one `in_proj_weight` [3D, D]; LoRA adds a low-rank delta to the
chosen slices (and to `out_proj` for "o"). In training the deltas run as their own path (LoRA
dropout acts on their input); in eval they are merged into the weights, so the attention costs
what the frozen one does. Scaling: alpha / rank (LoRA, DPL) or alpha / sqrt(rank) (CLIP-LoRA's
loralib/layers.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

QKV = ("q", "k", "v")


class AttentionLoRA(nn.Module):
    def __init__(
        self,
        width: int,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.1,
        targets: tuple[str, ...] = ("q", "v"),
        scaling: str = "rank",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.targets = tuple(t for t in (*QKV, "o") if t in targets)
        self.scale = alpha / (math.sqrt(rank) if scaling == "sqrt_rank" else rank)
        n = len(self.targets)
        self.a = nn.Parameter(torch.empty(n, rank, width, **kw))  # [target, r, D]
        self.b = nn.Parameter(torch.zeros(n, width, rank, **kw))  # zero: starts as the identity
        nn.init.kaiming_uniform_(self.a.view(n * rank, width), a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def _delta(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(h, self.a[i]), self.b[i]) * self.scale

    def delta(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Low-rank updates of q, k, v (those targeted) for input h [B,S,D]. Each projection
        drops its input on its own, in q, k, v order (peft's LoRA Linear and CLIP-LoRA's
        loralib LinearLoRA each hold their own dropout)."""
        return {t: self._delta(i, self.dropout(h)) for i, t in enumerate(self.targets) if t != "o"}

    def delta_out(self, out: torch.Tensor) -> torch.Tensor | None:
        """The "o" update for the attention output before its projection, or None."""
        if "o" not in self.targets:
            return None
        return self._delta(self.targets.index("o"), self.dropout(out))

    def merged(self, in_proj_weight: torch.Tensor) -> torch.Tensor:
        """in_proj_weight [3D, D] with the q/k/v deltas added (eval only: no dropout)."""
        d = in_proj_weight.shape[1]
        parts = []
        for j, t in enumerate(QKV):
            w = in_proj_weight[j * d : (j + 1) * d]
            if t in self.targets:
                i = self.targets.index(t)
                w = w + ((self.b[i] @ self.a[i]) * self.scale).to(w.dtype)
            parts.append(w)
        return torch.cat(parts, 0)

    def merged_out(self, out_proj_weight: torch.Tensor) -> torch.Tensor:
        if "o" not in self.targets:
            return out_proj_weight
        i = self.targets.index("o")
        return out_proj_weight + ((self.b[i] @ self.a[i]) * self.scale).to(out_proj_weight.dtype)
