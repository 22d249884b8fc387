"""MaPLe: 2 text context tokens per layer to depth 9; vision prompts are a learnable linear map
(text width -> vision width) of the text prompts of the same layer (docs/method.md §6)."""

from dpl.methods import register
from dpl.methods.config import MethodConfig
from dpl.prompts import PromptConfig

register(
    "maple",
    MethodConfig(
        method="maple",
        prompts=PromptConfig(
            n_ctx_text=2,
            depth_text=0.75,
            ctx_init="a photo of a",
            n_ctx_vision=2,
            depth_vision=0.75,
            coupling="maple",
        ),
    ),
)
