"""KgCoOp: CoOp + 8·(1 − mean_c cos(t^d_c, t^o_c)) towards the hand-crafted prompt (METHOD.md §6)."""

from dpl.methods import register
from dpl.methods.config import LossConfig, MethodConfig, OptimConfig
from dpl.prompts import PromptConfig

register(
    "kgcoop",
    MethodConfig(
        method="kgcoop",
        prompts=PromptConfig(n_ctx_text=4, depth_text=1, ctx_init="a photo of a"),
        loss=LossConfig(kg_cos=8.0),
        optim=OptimConfig(name="sgd", lr=2e-3, batch_size=128, epochs=100),
    ),
)
