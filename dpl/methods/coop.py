"""CoOp: 4 learnable context vectors at the text input, CE (docs/method.md §6)."""

from dpl.methods import register
from dpl.methods.config import MethodConfig
from dpl.prompts import PromptConfig

register(
    "coop",
    MethodConfig(
        method="coop",
        prompts=PromptConfig(n_ctx_text=4, depth_text=1, ctx_init="a photo of a"),
    ),
)
