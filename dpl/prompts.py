"""Deep prompt parameters (docs/dpl.md §2) and MaPLe's text-to-vision coupling (§6), one set per
member (dpl/members.py): every layer's prompts are one [K,n,width] parameter."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dpl.members import Gen, StackedLinear, member_parameter


class DeepPrompts(nn.Module):
    """One [K,n,width] parameter per layer 0..depth-1; layer 0 may start from word embeddings.
    Others: N(0, std), or (init="kaiming") U(±1/√fan_in) (PromptConfig.init), each member's
    drawn from its own generator, layer by layer as its run alone draws them."""

    def __init__(
        self,
        n_tokens: int,
        width: int,
        depth: int,
        first: torch.Tensor | None = None,
        std: float = 0.02,
        init: str = "normal",
        fan_in: int | None = None,
        gens: Sequence[Gen] = (None,),
    ) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in or width)
        layers = [torch.empty(len(gens), n_tokens, width) for _ in range(depth)]
        for k, g in enumerate(gens):
            for i, layer in enumerate(layers):
                if i == 0 and first is not None:
                    layer[k] = first.detach()
                elif init == "kaiming":
                    layer[k].uniform_(-bound, bound, generator=g)
                else:
                    layer[k] = torch.randn(n_tokens, width, generator=g) * std
        self.layers = nn.ParameterList(member_parameter(p.to(_device(first))) for p in layers)

    def forward(self) -> list[torch.Tensor]:
        return list(self.layers)


def _device(first: torch.Tensor | None) -> torch.device:
    return first.device if first is not None else torch.device("cpu")


class CoupledPrompts(nn.Module):
    """MaPLe: the vision prompt of layer i is a learnable linear map of the text prompt of layer i.

    As the release builds them ([MPL] trainers/maple.py): layer 0's map is its own Linear, and the
    maps of layers 1..depth-1 are `_get_clones` (deep copies) of one initialised Linear, so they
    all start from the same weights."""

    def __init__(
        self, text_width: int, vision_width: int, depth: int, gens: Sequence[Gen] = (None,)
    ) -> None:
        super().__init__()
        # Each member draws its depth Linears in turn, as a run alone constructs them; then the
        # maps of layers 2.. take layer 1's weights.
        drawn = [[StackedLinear(text_width, vision_width, gens=(g,)) for _ in range(depth)]
                 for g in gens]  # fmt: skip
        self.proj = nn.ModuleList(
            StackedLinear.stack(
                [m[min(i, 1)].weight[0] for m in drawn], [m[min(i, 1)].bias[0] for m in drawn]
            )
            for i in range(depth)
        )

    def forward(self, text_prompts: list[torch.Tensor]) -> list[torch.Tensor]:
        """text prompts [K,n,Dt] per layer -> vision prompts [K,n,Dv] per layer."""
        return [proj(p) for proj, p in zip(self.proj, text_prompts)]
