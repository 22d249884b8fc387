"""Deep prompt parameters (docs/method.md §2) and MaPLe's text-to-vision coupling (§6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PromptConfig:
    """Learnable context. depth = layers with their own prompts (0 = none): a count, or a fraction
    of the tower (dpl/layers.py) so that settings carry over to deeper and shallower towers."""

    n_ctx_text: int = 4
    depth_text: int | float = 1  # 1: CoOp (layer 0 only); 0.75 (9 of 12): IVLP/PromptSRC/DPL/MaPLe
    ctx_init: str = "a photo of a"  # layer-0 text context initialised from these words
    n_ctx_vision: int = 0
    depth_vision: int | float = 0
    coupling: str = "none"  # "none" | "maple": vision prompts = Linear(text prompts) per layer
    init_std: float = 0.02  # N(0, std) for every prompt not initialised from words

    def __post_init__(self) -> None:
        if self.coupling not in ("none", "maple"):
            raise ValueError(f"prompts.coupling={self.coupling!r}: choose 'none' or 'maple'")


class DeepPrompts(nn.Module):
    """One [n, width] parameter per layer 0..depth-1; layer 0 may start from word embeddings."""

    def __init__(
        self,
        n_tokens: int,
        width: int,
        depth: int,
        first: torch.Tensor | None = None,
        std: float = 0.02,
    ) -> None:
        super().__init__()
        params = []
        for i in range(depth):
            if i == 0 and first is not None:
                params.append(nn.Parameter(first.detach().clone()))
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
