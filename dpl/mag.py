"""Multimodal Alignment Guidance (docs/dpl.md §4): the bridge behind S_cross and the alignment loss.

M shared learnable tokens L [M,d] attend over each modality's layer tokens through a per-modality
linear map W: att = softmax_j(τ <L_m, W X_j>) (no 1/sqrt(d)). The same attention aggregates
W X into M tokens per sample; the loss pulls each image's aggregate towards its class's text one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dpl.config import MAGConfig


class MAGBridge(nn.Module):
    def __init__(self, vision_width: int, text_width: int, cfg: MAGConfig) -> None:
        super().__init__()
        self.tau = cfg.tau
        self.all_text = cfg.text_tokens == "all"
        self.tokens = nn.Parameter(torch.empty(cfg.tokens, cfg.dim))
        nn.init.kaiming_uniform_(self.tokens, a=math.sqrt(5))
        self.proj = nn.ModuleDict(
            {"vision": nn.Linear(vision_width, cfg.dim), "text": nn.Linear(text_width, cfg.dim)}
        )

    def attend(
        self, x: torch.Tensor, modality: str, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,S,D], valid [B,S] -> (attention of the shared tokens over tokens [B,M,S], W X [B,S,d])."""
        z = self.proj[modality](x)  # [B,S,d]
        logits = self.tau * torch.einsum("md,bsd->bms", self.tokens.to(z.dtype), z).float()
        if modality != "text" or not self.all_text:
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        return logits.softmax(-1).to(z.dtype), z


def alignment_loss(
    vision: list[torch.Tensor], text: list[torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """L_MAG = mean over layers, samples and shared tokens of ½[(1−<v̂,m>) + (1−<t̂,m>)],
    m = (v̂+t̂)/2, with v [B,M,d] per layer and t [C,M,d] per layer taken at each sample's label."""
    if not vision or len(vision) != len(text):
        raise ValueError("MAG loss needs the same number (>0) of vision and text layers")
    # With unit v̂, t̂ and m = (v̂+t̂)/2: <v̂,m> = <t̂,m> = (1 + <v̂,t̂>)/2, so each term is
    # (1 − cos(v, t))/2; computed that way it needs no [L,B,M,d] temporaries beyond the inputs.
    v = torch.stack(vision).float()  # [L,B,M,d]
    t = torch.stack(text).float()[:, labels]  # [L,B,M,d]
    return (0.5 * (1 - F.cosine_similarity(v, t, dim=-1))).mean()
