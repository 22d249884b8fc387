"""DPL, the default recipe (docs/method.md §5): IVLP base (text 4 ctx depth 9, vision 4 prompts
depth 6), LoRA r8 on q/v of vision layers 6..11, IWTD (noise mode) in the prompted layers, RER with
the annealed λ, MAG (weight 30), PromptSRC-style consistency (25 / 10 / 2.5). The frozen branch sees
the clean view; the learnable one a patch-wise RandAugment view. No LLM prompts (README: deviations).
The training recipe (AdamW, the release's schedule, learnable logit scale, epochs) is
configs/methods/dpl.yaml.
"""

from dpl.mag import MAGConfig
from dpl.methods import register
from dpl.methods.config import LoRAConfig, LossConfig, MethodConfig
from dpl.prompts import PromptConfig
from dpl.residual_entropy import RERConfig
from dpl.token_dropout import IWTDConfig

register(
    "dpl",
    MethodConfig(
        method="dpl",
        prompts=PromptConfig(n_ctx_text=4, depth_text=0.75, n_ctx_vision=4, depth_vision=0.5),
        lora=LoRAConfig(rank=8, alpha=16.0, dropout=0.1, layers="0.5:1"),
        iwtd=IWTDConfig(enabled=True),
        mag=MAGConfig(enabled=True, weight=30.0),
        rer=RERConfig(enabled=True, weight=0.05, lambda0=0.1),
        loss=LossConfig(text_l1=25.0, image_l1=10.0, kl=2.5),
        frozen_view="clean",
        train_view="patch_randaugment",
    ),
)
