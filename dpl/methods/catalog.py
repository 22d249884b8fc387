"""The built-in methods, declared: each one's typed defaults (the structure its release builds)
and the module class that builds it, registered in the field's chronological order (the order
reports list methods in). Torch-free: a model module is imported only when a model is built.

Each method's training recipe (optimiser, epochs, batch, per protocol, dataset and shot count) is
its YAML in dplbench/configs/methods/, every value citing the release file it comes from. Every
built-in that trains is built over the member axis (dpl/members.py), so its jobs may train fused.
"""

from __future__ import annotations

from dpl.config import (
    GPAConfig,
    IWTDConfig,
    LLMConfig,
    LoRAConfig,
    LossConfig,
    MAGConfig,
    MethodConfig,
    PromptConfig,
    RERConfig,
    TeacherConfig,
)
from dpl.methods.registry import register

# Zero-shot CLIP: the dataset's hand-crafted template(s), nothing trained (docs/dpl.md §6).
register(
    "zsclip",
    MethodConfig(method="zsclip", prompts=PromptConfig(n_ctx_text=0, depth_text=0)),
    "dpl.methods.zsclip:ZeroShotCLIP",
    plugins=False,
    trains=False,
)

# CoOp: 4 learnable context vectors at the text input, CE (docs/dpl.md §6).
register(
    "coop",
    MethodConfig(
        method="coop", prompts=PromptConfig(n_ctx_text=4, depth_text=1, ctx_init="a photo of a")
    ),
    fusable=True,
)

# CoCoOp: CoOp's context shifted per image by a meta-net on the image feature (docs/dpl.md §6).
register(
    "cocoop",
    MethodConfig(
        method="cocoop", prompts=PromptConfig(n_ctx_text=4, depth_text=1, ctx_init="a photo of a")
    ),
    "dpl.methods.cocoop:CoCoOp",
    plugins=False,
    fusable=True,
)

# KgCoOp: CoOp + W·(1 − mean_c cos(t^d_c, t^o_c)) towards the hand-crafted prompt (docs/dpl.md
# §6); W = 1 is KgCoOp/train.py's TRAINER.COOP.W default, its scripts use 8 (configs/methods/kgcoop.yaml).
register(
    "kgcoop",
    MethodConfig(
        method="kgcoop",
        prompts=PromptConfig(n_ctx_text=4, depth_text=1, ctx_init="a photo of a"),
        loss=LossConfig(kg_cos=1.0),
    ),
    fusable=True,
)

# IVLP: independent deep text and vision prompts 4+4, depth 9/9, CE (docs/dpl.md §6).
register(
    "ivlp",
    MethodConfig(
        method="ivlp",
        prompts=PromptConfig(n_ctx_text=4, depth_text=0.75, n_ctx_vision=4, depth_vision=0.75),
    ),
    fusable=True,
)

# MaPLe: 2 text context tokens per layer to depth 9; vision prompts are a learnable linear map
# (text width -> vision width) of the text prompts of the same layer (docs/dpl.md §6).
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
    fusable=True,
)


def llamp_config(name: str, n_tokens: int, llm: str, recipe: str, **changes) -> MethodConfig:
    """The LLaMP base as both releases build it (flags.py defaults, launch.sh): 4 text ctx to
    depth 9 ("a photo of a" init), LLM tokens to depth 9, 4 vision prompts to depth 6, LoRA r8
    α16 dropout 0.1 on vision q/v of layers 6..11, loss CE + 25·L1(text) + 10·L1(image) + 2.5·KL
    against the frozen branch (train_llamp.py / train_drople.py)."""
    return MethodConfig(
        method=name,
        prompts=PromptConfig(
            n_ctx_text=4,
            depth_text=0.75,
            ctx_init="a photo of a",
            n_ctx_vision=4,
            depth_vision=0.5,
            init="kaiming",  # drople.py ~225-243, llamp.py ~171-187
        ),
        lora=LoRAConfig(rank=8, alpha=16.0, dropout=0.1, layers="0.5:1"),
        loss=LossConfig(text_l1=25.0, image_l1=10.0, kl=2.5),
        llm=LLMConfig(model=llm, recipe=recipe, n_tokens=n_tokens, depth=0.75),
        **changes,
    )


# LLaMP (CVPR 2024), the base the DPL release forks (docs/dpl.md §7). launch.sh:
# --num_llm_prompts 16; one augmented view feeds both branches (data/meta_dataset.py:220-223:
# data = [img_1, img_1, label]).
register(
    "llamp",
    # its teacher: text from the LLM's descriptions (tools/extract_clip_text_features_zs.py), the
    # image tower with the current LoRA (llamp.py:130, 601-604; train mode: train_llamp.py:292)
    llamp_config(
        "llamp",
        16,
        "meta-llama/Llama-2-7b-chat-hf",  # configs/llava/*.yml model_params.model_base
        "llamp",
        teacher=TeacherConfig(text="llamp", adapters="release"),
    ),
    "dpl.methods.llamp:LlampCLIP",
    uses_llm=True,
    fusable=True,
)

# PromptSRC: IVLP 4+4 depth 9 with self-regulating constraints (25·L1 text, 10·L1 image, 1·KL
# towards the frozen branch) and Gaussian prompt aggregation over epochs (docs/dpl.md §6).
register(
    "promptsrc",
    MethodConfig(
        method="promptsrc",
        prompts=PromptConfig(n_ctx_text=4, depth_text=0.75, n_ctx_vision=4, depth_vision=0.75),
        loss=LossConfig(text_l1=25.0, image_l1=10.0, kl=1.0),
        gpa=GPAConfig(enabled=True, mean=15.0, std=1.0),
        frozen_view="same",  # PromptSRC feeds the frozen branch the same augmented view
    ),
    fusable=True,
)

# CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW
# 2024): LoRA of rank 2 on q, k, v of every layer of both towers, nothing else trained; the
# classifier is "a photo of a {class}." through the adapted text tower, CE at logit scale 100. As
# the release builds it (MaxZanella/CLIP-LoRA loralib/utils.py apply_lora, loralib/layers.py:
# alpha 1, scaling alpha / sqrt(r), dropout 0.25 on the LoRA input). DPL's plug-ins switch onto it.
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
    fusable=True,
)

# DPL, the default recipe (docs/dpl.md §5): IVLP base (text 4 ctx depth 9, vision 4 prompts
# depth 6), LoRA r8 on q/v of vision layers 6..11, IWTD (noise mode) in the prompted layers, RER
# with the annealed λ, MAG (weight 30), PromptSRC-style consistency (25 / 10 / 2.5). The frozen
# branch sees the clean view; the learnable one a patch-wise RandAugment view. No LLM prompts
# (docs/deviations.md §2).
register(
    "dpl",
    MethodConfig(
        method="dpl",
        # prompt init as the DPL release draws it (PromptConfig.init)
        prompts=PromptConfig(
            n_ctx_text=4, depth_text=0.75, n_ctx_vision=4, depth_vision=0.5, init="kaiming"
        ),
        lora=LoRAConfig(rank=8, alpha=16.0, dropout=0.1, layers="0.5:1"),
        iwtd=IWTDConfig(enabled=True),
        mag=MAGConfig(enabled=True, weight=30.0),
        rer=RERConfig(enabled=True, weight=0.05, lambda0=0.1),
        loss=LossConfig(text_l1=25.0, image_l1=10.0, kl=2.5),
        frozen_view="clean",
        train_view="patch_randaugment",
    ),
    fusable=True,
)

# DPL as its release trains it: the LLaMP base with 24 LLM tokens (DroPLe launch.sh
# --num_llm_prompts 24) and IWTD, RER and MAG on top (models/drople.py). IWTD's text targets are
# SOT, the context and the LLM tokens; MAG and RER as in `dpl`.
register(
    "dpl-release",
    llamp_config(
        "dpl-release",
        24,
        "meta-llama/Meta-Llama-3-8B-Instruct",  # DroPLe scripts/launch/launch.sh --model_base
        "drople",
        iwtd=IWTDConfig(enabled=True),
        mag=MAGConfig(enabled=True, weight=30.0),
        rer=RERConfig(enabled=True, weight=0.05, lambda0=0.1),
        frozen_view="clean",
        train_view="patch_randaugment",
        # the 'dw' target from the LLM's descriptions (drople.py:194-202), and the teacher's
        # image tower with the current LoRA (drople.py:185-186, 848-851)
        teacher=TeacherConfig(text="drople", adapters="release"),
    ),
    "dpl.methods.llamp:LlampCLIP",
    uses_llm=True,
    fusable=True,
)
