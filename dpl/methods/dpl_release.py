"""DPL as its release trains it: the LLaMP base (dpl/methods/llamp.py) with 24 LLM tokens and
IWTD, RER and MAG on top (DroPLe launch.sh, models/drople.py). IWTD's text targets are SOT, the
context and the LLM tokens; MAG and RER as in `dpl`. The frozen branch sees the clean view, the
learnable one a patch-wise RandAugment view. Training recipe: configs/methods/dpl-release.yaml."""

from dpl.mag import MAGConfig
from dpl.methods import register
from dpl.methods.llamp import LlampCLIP, llamp_config
from dpl.residual_entropy import RERConfig
from dpl.token_dropout import IWTDConfig

register(
    "dpl-release",
    llamp_config(
        "dpl-release",
        24,  # DroPLe launch.sh --num_llm_prompts 24
        iwtd=IWTDConfig(enabled=True),
        mag=MAGConfig(enabled=True, weight=30.0),
        rer=RERConfig(enabled=True, weight=0.05, lambda0=0.1),
        frozen_view="clean",
        train_view="patch_randaugment",
    ),
    LlampCLIP,
)
