"""Deep prompt parameters (docs/dpl.md §2) and MaPLe's text-to-vision coupling (§6)."""

from __future__ import annotations

import math

import torch
from torch import nn


class DeepPrompts(nn.Module):
    """One [n, width] parameter per layer 0..depth-1; layer 0 may start from word embeddings.
    Others: N(0, std), or (init="kaiming") U(±1/√fan_in) (PromptConfig.init)."""

    def __init__(
        self,
        n_tokens: int,
        width: int,
        depth: int,
        first: torch.Tensor | None = None,
        std: float = 0.02,
        init: str = "normal",
        fan_in: int | None = None,
    ) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in or width)
        params = []
        for i in range(depth):
            if i == 0 and first is not None:
                params.append(nn.Parameter(first.detach().clone()))
            elif init == "kaiming":
                params.append(nn.Parameter(torch.empty(n_tokens, width).uniform_(-bound, bound)))
            else:
                params.append(nn.Parameter(torch.randn(n_tokens, width) * std))
        self.layers = nn.ParameterList(params)

    def forward(self) -> list[torch.Tensor]:
        return list(self.layers)


class CoupledPrompts(nn.Module):
    """MaPLe: the vision prompt of layer i is a learnable linear map of the text prompt of layer i.

    As the release builds them ([MPL] trainers/maple.py): layer 0's map is its own Linear, and the
    maps of layers 1..depth-1 are `_get_clones` (deep copies) of one initialised Linear, so they
    all start from the same weights."""

    def __init__(self, text_width: int, vision_width: int, depth: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(text_width, vision_width) for _ in range(depth))
        for proj in list(self.proj)[2:]:
            proj.load_state_dict(self.proj[1].state_dict())

    def forward(self, text_prompts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(p) for proj, p in zip(self.proj, text_prompts)]
