"""LoRA on the attention projections of open_clip blocks (docs/dpl.md §2), one set per member.

open_clip packs q, k, v into one `in_proj_weight` [3D, D]; LoRA adds a low-rank delta to the
chosen slices (and to `out_proj` for "o"). In training the deltas run as their own path (LoRA
dropout acts on their input, each projection with its own mask, each member from its own stream);
in eval they are merged into the weights, so the attention costs what the frozen one does.
Scaling: alpha / rank (LoRA, DPL) or alpha / sqrt(rank) (CLIP-LoRA's loralib/layers.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dpl.members import Gen, Streams, by_member, member_parameter, rows_of

QKV = ("q", "k", "v")


class AttentionLoRA(nn.Module):
    """a [K,T,r,D], b [K,T,D,r] for the T targeted projections of one block, K members."""

    def __init__(
        self,
        width: int,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.1,
        targets: tuple[str, ...] = ("q", "v"),
        scaling: str = "rank",
        gens: Sequence[Gen] = (None,),
    ) -> None:
        super().__init__()
        self.targets = tuple(t for t in (*QKV, "o") if t in targets)
        self.scale = alpha / (math.sqrt(rank) if scaling == "sqrt_rank" else rank)
        self.p = dropout
        n, k = len(self.targets), len(gens)
        self.a = member_parameter(torch.empty(k, n, rank, width))  # [K, target, r, D]
        self.b = member_parameter(torch.zeros(k, n, width, rank))  # zero: starts as the identity
        with torch.no_grad():
            for i, g in enumerate(gens):
                nn.init.kaiming_uniform_(
                    self.a[i].view(n * rank, width), a=math.sqrt(5), generator=g
                )

    def _delta(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """The update of target i for member-major input h [K,N,S,D] (dropped) -> [K·N,S,D]."""
        a, b = self.a[:, i].to(h.dtype), self.b[:, i].to(h.dtype)  # [K,r,D], [K,D,r]
        k = a.shape[0]
        if k == 1:
            return F.linear(F.linear(h[0], a[0]), b[0]) * self.scale
        x = h.reshape(k, -1, h.shape[-1])  # [K,N·S,D]
        y = torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2)) * self.scale
        return rows_of(y.reshape(h.shape))

    def delta(self, h: torch.Tensor, streams: Streams | None) -> dict[str, torch.Tensor]:
        """Low-rank updates of q, k, v (those targeted) for input h [K·N,S,D]. Each projection
        drops its input on its own, in q, k, v order (peft's LoRA Linear and CLIP-LoRA's loralib
        LinearLoRA each hold their own dropout), each member's mask from its `streams`."""
        hk = by_member(h, self.a.shape[0])
        return {
            t: self._delta(i, self._drop(hk, streams))
            for i, t in enumerate(self.targets)
            if t != "o"
        }

    def delta_out(self, out: torch.Tensor, streams: Streams | None) -> torch.Tensor | None:
        """The "o" update for the attention output before its projection, or None."""
        if "o" not in self.targets:
            return None
        hk = by_member(out, self.a.shape[0])
        return self._delta(self.targets.index("o"), self._drop(hk, streams))

    def _drop(self, h: torch.Tensor, streams: Streams | None) -> torch.Tensor:
        """Each member's dropout of h [K,...] in training, from its stream (None: torch's global
        stream, as a model used outside the harness draws)."""
        if not self.training or self.p == 0:
            return h
        streams = streams if streams is not None else Streams.global_(h.shape[0])
        return streams.dropout(h, self.p)

    def _merged(self, i: int, w: torch.Tensor) -> torch.Tensor:
        """w [D',D] plus each member's delta of target i -> [K,D',D]."""
        if self.a.shape[0] == 1:  # one member: the plain product
            return (w + ((self.b[0, i] @ self.a[0, i]) * self.scale).to(w.dtype))[None]
        return w + ((self.b[:, i] @ self.a[:, i]) * self.scale).to(w.dtype)

    def merged(self, in_proj_weight: torch.Tensor) -> torch.Tensor:
        """in_proj_weight [3D,D] with each member's q/k/v deltas added -> [K,3D,D] (eval only:
        no dropout)."""
        d = in_proj_weight.shape[1]
        parts = []
        for j, t in enumerate(QKV):
            w = in_proj_weight[j * d : (j + 1) * d]
            if t in self.targets:
                parts.append(self._merged(self.targets.index(t), w))
            else:
                parts.append(w.expand(self.a.shape[0], -1, -1))
        return torch.cat(parts, 1)

    def merged_out(self, out_proj_weight: torch.Tensor) -> torch.Tensor:
        """out_proj_weight [D,D] -> [K,D,D] with each member's "o" delta."""
        if "o" not in self.targets:
            return out_proj_weight.expand(self.a.shape[0], -1, -1)
        return self._merged(self.targets.index("o"), out_proj_weight)
