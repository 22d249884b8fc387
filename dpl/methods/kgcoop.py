"""KgCoOp: CoOp + W·(1 − mean_c cos(t^d_c, t^o_c)) towards the hand-crafted prompt (docs/method.md §6);
the release's scripts set W = 8 (configs/methods/kgcoop.yaml)."""

from dpl.methods import register
from dpl.methods.config import LossConfig, MethodConfig
from dpl.prompts import PromptConfig

register(
    "kgcoop",
    MethodConfig(
        method="kgcoop",
        prompts=PromptConfig(n_ctx_text=4, depth_text=1, ctx_init="a photo of a"),
        loss=LossConfig(kg_cos=1.0),  # KgCoOp/train.py TRAINER.COOP.W default; scripts use 8
    ),
)
