"""IVLP: independent deep text and vision prompts 4+4, depth 9/9, CE (docs/method.md §6)."""

from dpl.methods import register
from dpl.methods.config import MethodConfig
from dpl.prompts import PromptConfig

register(
    "ivlp",
    MethodConfig(
        method="ivlp",
        prompts=PromptConfig(n_ctx_text=4, depth_text=0.75, n_ctx_vision=4, depth_vision=0.75),
    ),
)
