"""Every typed config a method is built from, in one torch-free module: the frozen backbone, the
prompts, DPL's plug-ins (IWTD, MAG, RER), LoRA, the LLM prompt source, losses, optimiser and the
`MethodConfig` that holds them (built strictly by dpl/typed.py: unknown keys are errors). Each
method registers its defaults (dpl/methods/catalog.py); the modules that build models import their config from here, so naming a method, resolving its
recipe and planning a suite never import torch or open_clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def check_range(section: str, cfg: Any, rules: dict[str, str]) -> None:
    """Each value of `cfg` in its range, or one line naming key, value and range. Rules: ">=0",
    ">0", ">=1", "[0,1)", "[0,1]"."""
    for key, rule in rules.items():
        value = getattr(cfg, key)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is None:
                continue
            ok = {
                ">=0": lambda x: x >= 0,
                ">0": lambda x: x > 0,
                ">=1": lambda x: x >= 1,
                "[0,1)": lambda x: 0 <= x < 1,
                "[0,1]": lambda x: 0 <= x <= 1,
            }[rule](v)
            if not ok:
                raise ValueError(f"{section}.{key}={value!r}: must be {RANGE_WORDS[rule]}")


RANGE_WORDS = {
    ">=0": "0 or more",
    ">0": "more than 0",
    ">=1": "1 or more",
    "[0,1)": "at least 0 and below 1",
    "[0,1]": "between 0 and 1",
}

# IWTD's importance scores (docs/dpl.md §3, dpl/importance.py) and drop modes (dpl/token_dropout.py).
IMPORTANCE_SCORES = ("cls", "self", "cross")
DROP_MODES = ("noise", "zero")


@dataclass(frozen=True)
class BackboneConfig:
    """Which CLIP to load (docs/dpl.md §1: the frozen branch and the base of the learnable one)."""

    model: str = "ViT-B-16"  # open_clip architecture name
    pretrained: str | None = "openai"  # hub tag, local .pt/.bin/.safetensors path, or None (random)
    quick_gelu: bool | None = None  # None: decided from the weights (see module docstring)
    cache_dir: str | None = None  # hub cache, when a tag is downloaded
    # Random weights (pretrained None: tests, the smoke suite) are drawn from this seed, so a
    # random backbone is a fixed function of its config as pretrained weights are, shared by all
    # seeds of a job (and by the runs of a fused group).
    init_seed: int = 0


@dataclass(frozen=True)
class PromptConfig:
    """Learnable context. depth = layers with their own prompts (0 = none): a count, or a fraction
    of the tower (dpl/layers.py) so that settings carry over to deeper and shallower towers."""

    n_ctx_text: int = 4
    depth_text: int | float = 1  # 1: CoOp (layer 0 only); 0.75 (9 of 12): IVLP/PromptSRC/DPL/MaPLe
    ctx_init: str = "a photo of a"  # layer-0 text context initialised from these words
    n_ctx_vision: int = 0
    depth_vision: int | float = 0
    coupling: str = "none"  # "none" | "maple": vision prompts = Linear(text prompts) per layer
    # Every prompt not initialised from words: "normal" N(0, init_std) (CoOp, IVLP, MaPLe,
    # PromptSRC: the Dassl forks' nn.init.normal_(std=0.02)), or "kaiming": U(±1/√fan_in) as
    # DroPLe and LLaMP draw theirs (models/drople.py ~225-243, llamp.py ~171-187:
    # kaiming_uniform_(a=√5) on one [n, width] tensor per deeper text layer, fan_in = width, and
    # one [depth, n, width] tensor for all visual prompts, fan_in = n·width).
    init: str = "normal"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_range(
            "prompts",
            self,
            {
                "n_ctx_text": ">=0",
                "depth_text": ">=0",
                "n_ctx_vision": ">=0",
                "depth_vision": ">=0",
                "init_std": ">=0",
            },
        )
        if self.coupling not in ("none", "maple"):
            raise ValueError(f"prompts.coupling={self.coupling!r}: choose 'none' or 'maple'")
        if self.init not in ("normal", "kaiming"):
            raise ValueError(f"prompts.init={self.init!r}: choose 'normal' or 'kaiming'")


@dataclass(frozen=True)
class IWTDConfig:
    """docs/dpl.md §3. Defaults: the paper's and the authors' release (noise mode)."""

    enabled: bool = False
    importance: tuple[str, ...] = ("cls", "self", "cross")  # non-empty subset, or ("uniform",)
    p_min: float = 0.1
    p_max: float = 0.5
    drop_mode: str = "noise"  # "noise": h ⊙ ε, ε~N(1,σ²) (release) | "zero": inverted dropout
    sigma: float = 0.03
    text: bool = True  # act in the text encoder
    vision: bool = True  # act in the vision encoder
    # layers 0..n-1 (a count or a fraction of the tower, dpl/layers.py); None: the prompt depth
    text_layers: int | float | None = None
    vision_layers: int | float | None = None

    def __post_init__(self) -> None:
        check_range("iwtd", self, {"sigma": ">=0", "text_layers": ">=0", "vision_layers": ">=0"})
        names = set(self.importance)
        if not names or not (names <= set(IMPORTANCE_SCORES) or names == {"uniform"}):
            raise ValueError(
                f"iwtd.importance={list(self.importance)}: use a non-empty subset of "
                f"{list(IMPORTANCE_SCORES)} or ['uniform']"
            )
        if self.drop_mode not in DROP_MODES:
            raise ValueError(f"iwtd.drop_mode={self.drop_mode!r}: choose one of {DROP_MODES}")
        if not 0.0 <= self.p_min <= self.p_max < 1.0:
            raise ValueError(f"iwtd: need 0 <= p_min <= p_max < 1, got {self.p_min}, {self.p_max}")

    @property
    def needs_attention(self) -> bool:
        return bool({"cls", "self"} & set(self.importance))

    @property
    def needs_cross(self) -> bool:
        return "cross" in self.importance


@dataclass(frozen=True)
class MAGConfig:
    enabled: bool = False  # the alignment loss (the bridge also exists when S_cross needs it)
    weight: float = 30.0
    tokens: int = 64  # M
    dim: int = 512
    tau: float = 1.0
    # The text positions the shared tokens attend over: "all" (DroPLe multimodal_alignment.py
    # :66-81 softmaxes over the whole layer output: each class's own [EOT] and padding too) or
    # "valid" (up to each class's [EOT]).
    text_tokens: str = "all"

    def __post_init__(self) -> None:
        check_range("mag", self, {"weight": ">=0", "tokens": ">=1", "dim": ">=1", "tau": ">0"})
        if self.text_tokens not in ("all", "valid"):
            raise ValueError(f"mag.text_tokens={self.text_tokens!r}: choose 'all' or 'valid'")


@dataclass(frozen=True)
class RERConfig:
    enabled: bool = False
    weight: float = 0.05  # w_res: the loss term is −w_res (H_t + H_v)
    lambda0: float = 0.1
    fixed_lambda: bool = False  # True: λ = λ0 throughout

    def __post_init__(self) -> None:
        check_range("rer", self, {"weight": ">=0", "lambda0": "[0,1)"})


@dataclass(frozen=True)
class LLMConfig:
    """The LLM prompt source of `llamp` and `dpl-release`."""

    cache: str | None = None  # directory written by `dplbench llm cache`
    # The LLM the cache must come from: a hub id or a local folder (None: whichever it names).
    # The methods default to their release's (dpl/methods/catalog.py).
    model: str | None = None
    # How the cache must have been made (`dplbench llm cache --recipe`): "drople" or "llamp"
    # (generation length, precision, prompt wording: dplbench/llm/build.py RECIPES).
    recipe: str = "drople"
    n_tokens: int = 24  # P: DroPLe launch.sh --num_llm_prompts 24 (LLaMP: 16)
    depth: int | float = 0.75  # text layers 0..depth-1 get LLM tokens: --llm_prompt_depth 9 of 12

    def __post_init__(self) -> None:
        check_range("llm", self, {"n_tokens": ">=1", "depth": ">=0"})
        if self.recipe not in ("drople", "llamp"):
            raise ValueError(f"llm.recipe={self.recipe!r}: choose 'drople' or 'llamp'")


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen branch (docs/dpl.md §1): what its text target is and whether its image
    tower carries the learnable branch's LoRA."""

    # "template": the dataset's hand-crafted template(s) (`templates`); "drople" / "llamp": the
    # release's target from the LLM's descriptions (dpl/llm/teacher.py; LLM methods only).
    text: str = "template"
    # "none": the original CLIP (a fixed anchor, its features cached per sample); "release": CLIP
    # with the current LoRA, its dropout active, as DroPLe and LLaMP run it (peft's LoraModel
    # injects LoRA into the very vision model the teacher uses: drople.py:185-186, 848-851).
    adapters: str = "none"

    def __post_init__(self) -> None:
        if self.text not in ("template", "drople", "llamp"):
            raise ValueError(f"teacher.text={self.text!r}: choose template, drople or llamp")
        if self.adapters not in ("none", "release"):
            raise ValueError(f"teacher.adapters={self.adapters!r}: choose 'none' or 'release'")


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA on attention projections (docs/dpl.md §2). DPL: q and v of the second half of the
    vision tower (layers 6-11 of ViT-B/16); CLIP-LoRA: q, k, v of every layer of both towers."""

    rank: int = 0  # 0: off
    alpha: float = 16.0
    dropout: float = 0.1
    # Indices, "all", or "a:b" with fractions of the tower (dpl/layers.py): carries over depths.
    layers: str | tuple[int, ...] = "0.5:1"
    targets: tuple[str, ...] = ("q", "v")  # of q, k, v, o
    encoders: tuple[str, ...] = ("vision",)  # of vision, text
    scaling: str = "rank"  # alpha / rank ("rank", LoRA's) or alpha / sqrt(rank) (CLIP-LoRA's)

    def __post_init__(self) -> None:
        check_range("lora", self, {"rank": ">=0", "alpha": ">0", "dropout": "[0,1)"})
        if not set(self.targets) <= {"q", "k", "v", "o"} or not self.targets:
            raise ValueError(f"lora.targets={self.targets}: some of q, k, v, o")
        if not set(self.encoders) <= {"vision", "text"}:
            raise ValueError(f"lora.encoders={self.encoders}: some of vision, text")
        if self.scaling not in ("rank", "sqrt_rank"):
            raise ValueError(f"lora.scaling={self.scaling!r}: choose 'rank' or 'sqrt_rank'")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the named loss terms (docs/dpl.md §5, §6). IWTD/MAG/RER weights live in theirs."""

    ce: float = 1.0
    text_l1: float = 0.0  # L1(t^d, t^o), normalised features, mean
    image_l1: float = 0.0  # L1(f^d, f^o)
    kl: float = 0.0  # KL(p_frozen || p_learn) summed / (B·C)
    kg_cos: float = 0.0  # KgCoOp: 1 − mean_c cos(t^d_c, t^o_c)

    def __post_init__(self) -> None:
        check_range(
            "loss",
            self,
            {"ce": ">=0", "text_l1": ">=0", "image_l1": ">=0", "kl": ">=0", "kg_cos": ">=0"},
        )


@dataclass(frozen=True)
class GPAConfig:
    """PromptSRC's Gaussian prompt aggregation over epochs (weights N(e; mean, std), e 1-based)."""

    enabled: bool = False
    mean: float = 15.0
    std: float = 1.0

    def __post_init__(self) -> None:
        check_range("gpa", self, {"std": ">0"})


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and epochs. Defaults are Dassl's (the CoOp family's trainer): SGD with
    momentum 0.9 and weight decay 5e-4, one constant warm-up epoch at 1e-5, then a cosine stepped
    per epoch (Dassl.pytorch dassl/config/defaults.py; dpl/schedules.py)."""

    name: str = "sgd"  # "sgd" | "adamw"
    lr: float = 2e-3  # prompts, meta-nets, MAG
    lr_lora: float = 2e-5
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    schedule: str = "dassl"  # "dassl" | "dpl_release" | "cosine_iterations" (dpl/schedules.py)
    warmup_epochs: int = 1  # dassl: epochs at the constant warm-up lr
    warmup_lr: float = 1e-5
    epochs: int = 20
    # Train for exactly this many optimiser steps instead (CLIP-LoRA: 500 x shots); `epochs` is
    # then what they take.
    iterations: int | None = None
    min_lr: float = 0.0  # cosine_iterations: the lr the cosine ends at
    batch_size: int = 4  # per worker
    # The last, partial batch of an epoch: "dassl" drops it when the set has at least one batch
    # (Dassl data_manager.py: drop_last = len(data) >= batch_size), "keep" keeps it (DroPLe).
    last_batch: str = "dassl"

    def __post_init__(self) -> None:
        check_range(
            "optim",
            self,
            {
                "lr": ">0",
                "lr_lora": ">0",
                "momentum": "[0,1)",
                "betas": "[0,1)",
                "weight_decay": ">=0",
                "warmup_epochs": ">=0",
                "warmup_lr": ">=0",
                "epochs": ">=0",
                "iterations": ">=1",
                "min_lr": ">=0",
                "batch_size": ">=1",
            },
        )
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optim.name={self.name!r}: choose 'sgd' or 'adamw'")
        if self.schedule not in ("dassl", "dpl_release", "cosine_iterations"):
            raise ValueError(
                f"optim.schedule={self.schedule!r}: choose dassl, dpl_release or cosine_iterations"
            )
        if self.schedule == "cosine_iterations" and not self.iterations:
            raise ValueError("optim.schedule=cosine_iterations needs optim.iterations")
        if self.last_batch not in ("dassl", "keep"):
            raise ValueError(f"optim.last_batch={self.last_batch!r}: choose 'dassl' or 'keep'")


@dataclass(frozen=True)
class LogitScaleConfig:
    """The scale s of the logits s·cos(f, t). Fixed: CLIP's own (exp of its logit_scale, at most
    100). Learnable (DroPLe models/drople.py): a parameter initialised to ln(100) and clamped to
    [0, max_log] before every use."""

    learnable: bool = False
    init_log: float = math.log(100.0)
    max_log: float = math.log(100.0)

    def __post_init__(self) -> None:
        check_range("logit_scale", self, {"init_log": ">=0", "max_log": ">=0"})


@dataclass(frozen=True)
class MethodConfig:
    method: str = "dpl"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    iwtd: IWTDConfig = field(default_factory=IWTDConfig)
    mag: MAGConfig = field(default_factory=MAGConfig)
    rer: RERConfig = field(default_factory=RERConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gpa: GPAConfig = field(default_factory=GPAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)  # the LLM prompt source (llamp, dpl-release)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    # Frozen branch input (docs/protocols.md §3): "clean" resize+centre-crop (DPL release) or "same" as
    # the learnable branch (PromptSRC). Clean-view frozen features are a pure function of the image,
    # so they are cached per sample key across epochs.
    frozen_view: str = "same"
    train_view: str = (
        "clip"  # "clip" augmentation (docs/protocols.md §3) | "patch_randaugment" (docs/dpl.md §5)
    )
    # Frozen text features t^o: "dataset" (its hand-crafted template), "promptsrc" (PromptSRC's
    # 60 ImageNet templates), "openai_imagenet" (CLIP's 80).
    templates: str = "dataset"
    # Replaces the dataset's hand-crafted template where a release uses another one (KgCoOp's DTD).
    dataset_template: str | None = None
    logit_scale: LogitScaleConfig = field(default_factory=LogitScaleConfig)
    cache_frozen_image_features: bool = True

    def __post_init__(self) -> None:
        checks = {
            "frozen_view": ("clean", "same"),
            "train_view": ("clip", "patch_randaugment"),
            "templates": ("dataset", "promptsrc", "openai_imagenet"),
        }
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r}: choose one of {allowed}")
