"""PromptSRC: IVLP 4+4 depth 9 with self-regulating constraints (25·L1 text, 10·L1 image, 1·KL
towards the frozen branch) and Gaussian prompt aggregation over epochs (docs/method.md §6)."""

from dpl.methods import register
from dpl.methods.config import GPAConfig, LossConfig, MethodConfig
from dpl.prompts import PromptConfig

register(
    "promptsrc",
    MethodConfig(
        method="promptsrc",
        prompts=PromptConfig(n_ctx_text=4, depth_text=0.75, n_ctx_vision=4, depth_vision=0.75),
        loss=LossConfig(text_l1=25.0, image_l1=10.0, kl=1.0),
        gpa=GPAConfig(enabled=True, mean=15.0, std=1.0),
        frozen_view="same",  # PromptSRC feeds the frozen branch the same augmented view
    ),
)
