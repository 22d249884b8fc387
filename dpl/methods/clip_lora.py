"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models",
CVPRW 2024): LoRA of rank 2 on q, k, v of every layer of both towers, nothing else trained; the
classifier is "a photo of a {class}." through the adapted text tower, CE at logit scale 100. As the
release builds it (MaxZanella/CLIP-LoRA loralib/utils.py apply_lora, loralib/layers.py: alpha 1,
scaling alpha / sqrt(r), dropout 0.25 on the LoRA input). Its training recipe (AdamW, 500 x shots
steps, cosine per step) is configs/methods/clip_lora.yaml. DPL's plug-ins switch onto it.
"""

from dpl.methods import register
from dpl.methods.config import LoRAConfig, MethodConfig
from dpl.prompts import PromptConfig

register(
    "clip_lora",
    MethodConfig(
        method="clip_lora",
        # no learnable context: the prompt is the fixed words "a photo of a <class>."
        prompts=PromptConfig(n_ctx_text=0, depth_text=0, ctx_init="a photo of a"),
        lora=LoRAConfig(
            rank=2,
            alpha=1.0,
            dropout=0.25,
            layers="all",
            targets=("q", "k", "v"),
            encoders=("vision", "text"),
            scaling="sqrt_rank",
        ),
    ),
)
