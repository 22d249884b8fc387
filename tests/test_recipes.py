"""Every resolved recipe value against the releases' own configs, and our own choices apart.

RELEASE is transcribed by hand from the release files that configs/methods/*.yaml name, each row
with its file: (method, protocol, dataset, shots) -> the values a job of that cell must train with.
CHOICES holds what the releases do not say or say otherwise, each row pointing at its entry in
docs/deviations.md. Neither reads configs/methods: a drift in either shows here.
"""

import math

import pytest

from dplbench.plan.methods import resolve_method
from dplbench.plan.suites import load_suite

DASSL = {  # Dassl.pytorch defaults shared by the CoOp family
    "optim.name": "sgd",
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "optim.schedule": "dassl",
    "optim.warmup_epochs": 1,
    "optim.warmup_lr": 1e-5,
    "optim.last_batch": "dassl",
    "logit_scale.learnable": False,
}
OTHER = ["caltech101", "dtd", "eurosat"]

# The 11 base-to-novel datasets both LLM releases ship a config for (their launch.sh reads
# configs/llava/zero-shot/<dataset>_llama_7b.yml: caltech, dtd, eurosat, fgvc_aircraft, flowers,
# food, imagenet, pets, stanfordcars, sun397, ucf101)
RELEASE_DATASETS = ["caltech101", "dtd", "eurosat", "fgvc_aircraft", "oxford_flowers", "food101",
                    "imagenet", "oxford_pets", "stanford_cars", "sun397", "ucf101"]  # fmt: skip

# dpl-release: JustCoolPig/DroPLe @ 3c2ef2a as scripts/launch/launch.sh runs train_drople.py
# (shared/spec/RECIPES.md "dpl-release (DroPLe)"). Flags: flags.py defaults, launch.sh overrides,
# then configs/llava/zero-shot/<dataset>_llama_7b.yml over both (train_drople.py:123 load_args).
DROPLE = {
    # optimiser: train_drople.py:225-227 AdamW(lr=args.lr, betas, weight_decay) over the groups of
    # :94-112 (every trainable non-'lora' parameter at --lr 2e-4, launch.sh:50; 'lora' ones at
    # --lora_lr 2e-5, launch.sh:57), weight decay 5e-5 (flags.py:18), betas (flags.py:78)
    "optim.name": "adamw", "optim.lr": 2e-4, "optim.lr_lora": 2e-5,
    "optim.weight_decay": 5e-5, "optim.betas": [0.9, 0.999],
    # schedule: --lr_scheduler cosine (launch.sh:41): LambdaLR, 1 warm-up step, max(E, 20) + 1
    # steps, floors [1e-5, max(lora_lr / lr * 1e-5, 5e-6)] (train_drople.py:40-51, 239-254),
    # stepped at batch len // 10 of epoch 0 and after every epoch (:369-370, :383-384); its values
    # per epoch: test_the_release_schedules_lr_by_epoch
    "optim.schedule": "dpl_release",
    # batch 4 (configs/llava/zero-shot/*.yml:8 batch_size); the last partial batch is kept
    # (train_drople.py:230-237: DistributedSampler drop_last=False, DataLoader's default)
    "optim.batch_size": 4, "optim.last_batch": "keep",
    # epochs: the ymls' max_epochs is commented out (dtd_llama_7b.yml:7), so --max_epochs 20
    # (launch.sh:8, 38; flags.py:20); ImageNet's in DROPLE_EPOCHS
    "optim.epochs": 20,
    # logit scale: a parameter with requires_grad=True, init log(1 / 0.01) (models/drople.py:410),
    # clamped to [0, 4.605] before each use (:828)
    "logit_scale.learnable": True, "logit_scale.init_log": math.log(1 / 0.01),
    "logit_scale.max_log": 4.605,
    # loss (models/drople.py:895-927): CE (label_smoothing 0.0, launch.sh:53) + 25 L1 text
    # (:897-898) + 10 L1 image (:899-900) + 2.5 KL (--distillation_type soft --lambda_dist 2.5,
    # launch.sh:54-55; :901-905); no KgCoOp term, no GPA
    "loss.ce": 1.0, "loss.text_l1": 25.0, "loss.image_l1": 10.0, "loss.kl": 2.5,
    "loss.kg_cos": 0.0, "gpa.enabled": False,
    # RER: - weight_res (zn_text + zn_vision) (:906-915), --weight_res 0.05 (launch.sh:10, 40),
    # --lam_res 0.1 (launch.sh:9, 39), annealed unless --fix_lam (FIX_LAM=false, launch.sh:16)
    "rer.enabled": True, "rer.weight": 0.05, "rer.lambda0": 0.1, "rer.fixed_lambda": False,
    # MAG: 30 x its loss (:916-927); 64 tokens of width 512 (:418-424), --mag_temperature 1.0
    # (flags.py:96); the softmax over every text position (utils/multimodal_alignment.py:66-81)
    "mag.enabled": True, "mag.weight": 30.0, "mag.tokens": 64, "mag.dim": 512, "mag.tau": 1.0,
    "mag.text_tokens": "all",
    # IWTD: --token_modification_method importance_based_dropout (launch.sh:67), noise sigma 0.03
    # (flags.py:100), probabilities 0.5 .. 0.1 (flags.py:102, 104), importance = mean of cls,
    # self and MAG-cross scores (utils/token_importance.py:63)
    "iwtd.enabled": True, "iwtd.importance": ["cls", "self", "cross"], "iwtd.p_min": 0.1,
    "iwtd.p_max": 0.5, "iwtd.sigma": 0.03, "iwtd.drop_mode": "noise",
    "iwtd.text_layers": None, "iwtd.vision_layers": None,
    # LoRA: r 8, alpha 16, dropout 0.1 (launch.sh:42-44) on q_proj and v_proj of vision layers
    # range(--v_lora_start 6, --v_lora_end 12) (launch.sh:60-61; models/drople.py:92-98), peft's
    # LoraModel over CLIP's vision model only (:185-186; the text config needs --lora_decoding,
    # not given); peft's scaling alpha / r
    "lora.rank": 8, "lora.alpha": 16.0, "lora.dropout": 0.1, "lora.layers": "0.5:1",
    "lora.targets": ["q", "v"], "lora.encoders": ["vision"], "lora.scaling": "rank",
    # prompts: 4 text ctx (flags.py:61) from "a photo of a" (models/drople.py:231-237), text depth
    # max(--llm_prompt_depth 9, --text_prompt_depth 9) = 9 of 12 (launch.sh:56; flags.py:73;
    # drople.py:122-123); 4 vision prompts (flags.py:62) in 6 of 12 layers (flags.py:72); deeper
    # and visual prompts kaiming_uniform_(a=sqrt 5) (drople.py:225-228, 239-243)
    "prompts.n_ctx_text": 4, "prompts.ctx_init": "a photo of a", "prompts.depth_text": 0.75,
    "prompts.n_ctx_vision": 4, "prompts.depth_vision": 0.5, "prompts.init": "kaiming",
    "prompts.coupling": "none",
    # LLM source: --num_llm_prompts 24 (launch.sh:51) to --llm_prompt_depth 9 (launch.sh:56),
    # Meta-Llama-3-8B-Instruct (launch.sh:12, 65), its cache by DroPLe's tool (test_llm_recipes.py)
    "llm.n_tokens": 24, "llm.depth": 0.75, "llm.model": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llm.recipe": "drople",
    # teacher: the 'dw' text target from the LLM's descriptions (models/drople.py:194-202;
    # tools/extract_clip_text_features_zs.py:105-141), the image tower carrying the current LoRA
    # (peft injects it into clip_model.vision_model, :185-186, which the teacher runs, :848-851)
    "teacher.text": "drople", "teacher.adapters": "release",
    # views: the teacher sees the clean Resize + CenterCrop view, the prompted model the patch
    # RandAugment one (data/meta_dataset.py:67-92, 205-208; configs/patch_aug.json; launch.sh:68)
    "frozen_view": "clean", "train_view": "patch_randaugment",
}  # fmt: skip
DROPLE_EPOCHS = {"imagenet": 5}  # configs/llava/zero-shot/imagenet_llama_7b.yml:7 max_epochs: 5

# llamp: zhaohengz/LLaMP @ 3dec7f3 as scripts/launch/launch.sh (one line, :1) runs train_llamp.py;
# flags.py defaults, launch.sh overrides, configs/llava/zero-shot/<dataset>_llama_7b.yml over both
# (train_llamp.py:123 load_args). Few-shot (launch_fewshot.sh) is not reproduced:
# docs/deviations.md §2.
LLAMP = {
    # optimiser: train_llamp.py:206-208 AdamW(lr=args.lr, betas, weight_decay) over the groups of
    # :92-114 (non-'lora' parameters at --lr 2e-4, 'lora' ones at --lora_lr 2e-5: launch.sh:1),
    # weight decay 5e-5 (flags.py:20), betas (flags.py:92)
    "optim.name": "adamw", "optim.lr": 2e-4, "optim.lr_lora": 2e-5,
    "optim.weight_decay": 5e-5, "optim.betas": [0.9, 0.999],
    # schedule: --lr_scheduler cosine (launch.sh:1): train_llamp.py:44-83, 223-238 (1 warm-up
    # step, max(E, 20) + 1 steps, the same floors), stepped at :307-308 and :327-328
    "optim.schedule": "dpl_release",
    # batch 4 (configs/llava/zero-shot/*.yml:11; flags.py:17); partial batch kept
    # (train_llamp.py:215-221: DistributedSampler drop_last=False, DataLoader's default)
    "optim.batch_size": 4, "optim.last_batch": "keep",
    # epochs 20 (configs/llava/zero-shot/*.yml:10); ImageNet's in LLAMP_EPOCHS
    "optim.epochs": 20,
    # logit scale: learnable, init log(1 / 0.01) (models/llamp.py:321), clamp [0, 4.605] (:574)
    "logit_scale.learnable": True, "logit_scale.init_log": math.log(1 / 0.01),
    "logit_scale.max_log": 4.605,
    # loss (models/llamp.py:634-644): CE (label_smoothing 0.0, launch.sh:1) + 25 L1 text (:636)
    # + 10 L1 image (:637) + 2.5 KL (--distillation_type soft --lambda_dist 2.5: launch.sh:1;
    # :639-640); nothing else: no IWTD, MAG or RER, no GPA
    "loss.ce": 1.0, "loss.text_l1": 25.0, "loss.image_l1": 10.0, "loss.kl": 2.5,
    "loss.kg_cos": 0.0, "gpa.enabled": False,
    "iwtd.enabled": False, "mag.enabled": False, "rer.enabled": False,
    # LoRA: --lora_rank 8 --lora_alpha 16 --lora_dropout 0.1 --v_lora_start 6 --v_lora_end 12
    # (launch.sh:1) on q_proj and v_proj (models/llamp.py:59-62) of CLIP's vision model only
    # (:125-130; the text config needs --lora_decoding, not given); peft's scaling alpha / r
    "lora.rank": 8, "lora.alpha": 16.0, "lora.dropout": 0.1, "lora.layers": "0.5:1",
    "lora.targets": ["q", "v"], "lora.encoders": ["vision"], "lora.scaling": "rank",
    # prompts: 4 text ctx from "a photo of a" (models/llamp.py:176-182), depth max(9, 9) = 9 of 12
    # (:165, 168; flags.py:79, 88), 4 vision prompts (flags.py:76) in 6 layers (flags.py:87;
    # llamp.py:167, 171), kaiming_uniform_(a=sqrt 5) (llamp.py:170-172, 184-187)
    "prompts.n_ctx_text": 4, "prompts.ctx_init": "a photo of a", "prompts.depth_text": 0.75,
    "prompts.n_ctx_vision": 4, "prompts.depth_vision": 0.5, "prompts.init": "kaiming",
    "prompts.coupling": "none",
    # LLM source: --num_llm_prompts 16, --llm_prompt_depth 9 (launch.sh:1), Llama-2-7b-chat
    # (configs/llava/zero-shot/*.yml:6 model_base; flags.py:30), LLaMP's tool's cache
    "llm.n_tokens": 16, "llm.depth": 0.75, "llm.model": "meta-llama/Llama-2-7b-chat-hf",
    "llm.recipe": "llamp",
    # teacher: text from the LLM's descriptions (tools/extract_clip_text_features_zs.py:73-104,
    # models/llamp.py:135-142), the image tower with the current LoRA (peft wraps
    # clip_model.vision_model in place, :130; the teacher runs it, :602-604)
    "teacher.text": "llamp", "teacher.adapters": "release",
    # views: one view for both branches (data/meta_dataset.py:220-223 [img_1, img_1, label]),
    # RandomResizedCrop(224, bicubic) + RandomHorizontalFlip (meta_dataset.py:74-92; --rand_aug
    # not given)
    "frozen_view": "same", "train_view": "clip",
}  # fmt: skip
LLAMP_EPOCHS = {"imagenet": 10}  # configs/llava/zero-shot/imagenet_llama_7b.yml:10 max_epochs: 10

RELEASE = [
    # coop: 4 ctx "a photo of a", 200 epochs (ImageNet 50) for B2N; FS 16 random ctx, 50/100/200
    *[
        ("coop", "base2novel", d, 16, {**DASSL, "optim.lr": 0.002, "optim.batch_size": 32,
         "optim.epochs": 200, "prompts.n_ctx_text": 4, "prompts.ctx_init": "a photo of a"})
        for d in OTHER
    ],
    ("coop", "base2novel", "imagenet", 16, {"optim.epochs": 50}),
    *[
        ("coop", "fewshot", d, k, {**DASSL, "optim.epochs": e, "prompts.n_ctx_text": 16,
         "prompts.ctx_init": "", "optim.batch_size": 32, "optim.lr": 0.002})
        for d in OTHER
        for k, e in ((1, 50), (2, 100), (4, 100), (8, 200), (16, 200))
    ],
    *[("coop", "fewshot", "imagenet", k, {"optim.epochs": 50}) for k in (1, 2, 4, 8, 16)],
    ("coop", "xd", "imagenet", 16, {"optim.epochs": 50, "prompts.n_ctx_text": 4}),
    # cocoop: one config everywhere
    *[
        ("cocoop", p, d, 16, {**DASSL, "optim.lr": 0.002, "optim.batch_size": 1,
         "optim.epochs": 10, "prompts.n_ctx_text": 4, "prompts.ctx_init": "a photo of a"})
        for p, d in (("base2novel", "dtd"), ("base2novel", "imagenet"), ("xd", "imagenet"))
    ],
    # kgcoop: 100 epochs, batch 128, W 8, KgCoOp's own DTD template for the teacher
    *[
        ("kgcoop", p, d, 16, {**DASSL, "optim.lr": 0.002, "optim.batch_size": 128,
         "optim.epochs": 100, "loss.kg_cos": 8.0, "prompts.n_ctx_text": 4})
        for p, d in (("base2novel", "eurosat"), ("base2novel", "imagenet"))
    ],
    ("kgcoop", "base2novel", "dtd", 16, {"dataset_template": "a photo of a {}, a type of texture."}),
    ("kgcoop", "base2novel", "eurosat", 16, {"dataset_template": None}),
    # ivlp: PromptSRC's baseline config, 4+4 depth 9/9, lr 0.0025, 20 epochs, batch 4
    *[
        ("ivlp", p, d, 16, {**DASSL, "optim.lr": 0.0025, "optim.batch_size": 4,
         "optim.epochs": 20, "prompts.n_ctx_text": 4, "prompts.n_ctx_vision": 4,
         "prompts.depth_text": 0.75, "prompts.depth_vision": 0.75})
        for p, d in (("base2novel", "dtd"), ("base2novel", "imagenet"), ("xd", "imagenet"))
    ],
    # maple: B2N 2 ctx depth 9, lr 0.0035, 5 epochs (ImageNet too); xd/dg depth 3, 0.0026, 2
    *[
        ("maple", "base2novel", d, 16, {**DASSL, "optim.lr": 0.0035, "optim.epochs": 5,
         "optim.batch_size": 4, "prompts.n_ctx_text": 2, "prompts.depth_text": 0.75,
         "prompts.depth_vision": 0.75, "prompts.coupling": "maple"})
        for d in ("dtd", "imagenet")
    ],
    *[
        ("maple", p, "imagenet", 16, {**DASSL, "optim.lr": 0.0026, "optim.epochs": 2,
         "optim.batch_size": 4, "prompts.depth_text": 0.25, "prompts.depth_vision": 0.25})
        for p in ("xd", "dg")
    ],
    # promptsrc: B2N 20 epochs everywhere, GPA 15/1; FS 50 epochs, GPA by dataset; xd depth 3
    *[
        ("promptsrc", "base2novel", d, 16, {**DASSL, "optim.lr": 0.0025, "optim.epochs": 20,
         "optim.batch_size": 4, "gpa.enabled": True, "gpa.mean": 15.0, "gpa.std": 1.0,
         "templates": "promptsrc", "loss.text_l1": 25.0, "loss.image_l1": 10.0,
         "loss.kl": 1.0, "prompts.depth_text": 0.75, "prompts.depth_vision": 0.75})
        for d in ("dtd", "imagenet")
    ],
    *[
        ("promptsrc", "fewshot", d, k, {"optim.epochs": 50, "gpa.mean": 30.0, "gpa.std": 30.0,
         "templates": "promptsrc"})
        for d in ("imagenet", "caltech101", "oxford_pets", "food101", "ucf101", "sun397")
        for k in (1, 16)
    ],
    *[
        ("promptsrc", p, "imagenet", 16, {"optim.epochs": 20, "gpa.mean": 6.0, "gpa.std": 10.0,
         "prompts.depth_text": 0.25, "prompts.depth_vision": 0.25})
        for p in ("xd", "dg")
    ],
    # dpl: the DPL release's optimiser, schedule, batch, epochs, logit scale
    *[
        ("dpl", p, d, 16, {"optim.name": "adamw", "optim.lr": 2e-4, "optim.lr_lora": 2e-5,
         "optim.weight_decay": 5e-5, "optim.betas": [0.9, 0.999], "optim.batch_size": 4,
         "optim.schedule": "dpl_release", "optim.last_batch": "keep", "optim.epochs": e,
         "logit_scale.learnable": True, "logit_scale.max_log": 4.605,
         "prompts.depth_text": 0.75, "prompts.depth_vision": 0.5, "lora.rank": 8,
         "lora.layers": "0.5:1"})
        for p, d, e in (("base2novel", "dtd", 20), ("base2novel", "imagenet", 5))
    ],
    # dpl's DPL pieces, views and context: DroPLe models/drople.py `run` (L1 25 / 10 hard-coded,
    # MAG 30 hard-coded), scripts/launch/launch.sh (--lambda_dist 2.5, --weight_res 0.05,
    # --lam_res 0.1, label_smoothing 0.0), flags.py (token dropout rates 0.1..0.5, sigma 0.03,
    # --num_vis_ctx 4, --visual_prompt_depth 6), data/meta_dataset.py + configs/patch_aug.json
    # (clean view for the teacher, patch RandAugment for the student), drople.py ~225-243 (init)
    *[
        (m, "base2novel", "dtd", 16, {"loss.ce": 1.0, "loss.text_l1": 25.0,
         "loss.image_l1": 10.0, "loss.kl": 2.5, "rer.enabled": True, "rer.weight": 0.05,
         "rer.lambda0": 0.1, "rer.fixed_lambda": False, "mag.enabled": True, "mag.weight": 30.0,
         "mag.text_tokens": "all", "iwtd.enabled": True, "iwtd.p_min": 0.1, "iwtd.p_max": 0.5,
         "iwtd.sigma": 0.03, "iwtd.drop_mode": "noise", "iwtd.text_layers": None,
         "iwtd.vision_layers": None, "prompts.n_ctx_text": 4, "prompts.n_ctx_vision": 4,
         "prompts.init": "kaiming", "lora.dropout": 0.1, "lora.alpha": 16.0,
         "lora.targets": ["q", "v"], "frozen_view": "clean", "train_view": "patch_randaugment"})
        for m in ("dpl", "dpl-release")
    ],
    # dpl-release and llamp: every value of their recipes (DROPLE, LLAMP above), on every dataset
    # their launchers have a config for (configs/llava/zero-shot/<dataset>_llama_7b.yml)
    *[
        (m, "base2novel", d, 16, {**table, "optim.epochs": epochs.get(d, table["optim.epochs"])})
        for m, table, epochs in (("dpl-release", DROPLE, DROPLE_EPOCHS),
                                 ("llamp", LLAMP, LLAMP_EPOCHS))
        for d in RELEASE_DATASETS
    ],
    # clip_lora: AdamW 2e-4 wd 1e-2, batch 32, 500 x K steps with a per-step cosine to 1e-6
    *[
        ("clip_lora", "fewshot", d, k, {"optim.name": "adamw", "optim.lr_lora": 2e-4,
         "optim.weight_decay": 1e-2, "optim.batch_size": 32, "optim.iterations": 500 * k,
         "optim.schedule": "cosine_iterations", "optim.min_lr": 1e-6,
         "optim.last_batch": "keep", "lora.rank": 2, "lora.alpha": 1.0, "lora.dropout": 0.25,
         "lora.targets": ["q", "k", "v"], "lora.encoders": ["vision", "text"],
         "lora.layers": "all", "lora.scaling": "sqrt_rank",
         "dataset_template": "a photo of a {}."})
        for d in ("imagenet", "dtd")
        for k in (1, 2, 4, 8, 16)
    ],
]  # fmt: skip


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


# Our choices where a release is silent, inconsistent or differs on purpose: (cell, values, the
# docs/deviations.md section that says why).
CHOICES = [
    # CoOp's DG models are its xd ones (4 ctx "a photo of a", 50 epochs): §7
    ("coop", "dg", "imagenet", 16, {"optim.epochs": 50, "prompts.n_ctx_text": 4}, 7),
    # KgCoOp has a few-shot config at K=4 only: its base-to-novel recipe at every K: §7
    ("kgcoop", "fewshot", "dtd", 16, {"optim.epochs": 100, "loss.kg_cos": 8.0}, 7),
    # PromptSRC's commented-out GPA 45/5 applied to the datasets its comment names: §7
    *[
        ("promptsrc", "fewshot", d, 4, {"optim.epochs": 50, "gpa.mean": 45.0, "gpa.std": 5.0}, 7)
        for d in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")
    ],
    # CLIP-LoRA is few-shot only: its 16-shot recipe (8000 steps) elsewhere: §10
    ("clip_lora", "base2novel", "dtd", 16, {"optim.iterations": 8000}, 10),
    # dpl trains xd on all ImageNet classes as the field does (5 epochs): §6
    ("dpl", "xd", "imagenet", 16, {"optim.epochs": 5, "optim.name": "adamw"}, 6),
    # dpl's long-tail protocol runs its base-to-novel recipe: §7
    ("dpl", "longtail", "eurosat", 16, {"optim.epochs": 20, "optim.schedule": "dpl_release"}, 7),
    # dpl: a fixed teacher and the dataset template (no LLM): §2
    ("dpl", "base2novel", "dtd", 16, {"teacher.text": "template", "teacher.adapters": "none"}, 2),
]  # fmt: skip


@pytest.mark.parametrize(("method", "protocol", "dataset", "shots", "expected"), RELEASE)
def test_resolved_recipe_matches_the_release(method, protocol, dataset, shots, expected):
    from dpl.typed import to_dict

    cfg = to_dict(resolve_method(method, protocol=protocol, dataset=dataset, shots=shots))
    got = {k: _get(cfg, k) for k in expected}
    assert got == expected


# The releases' learning rates (prompts group, LoRA group) at (epoch, batch of 100), worked out by
# hand from DroPLe train_drople.py:40-51, 239-254, 369-370, 383-384 (LLaMP train_llamp.py:44-83,
# 223-238, 307-308, 327-328 is the same): lr x max(min / lr, 1/2 (1 + cos(pi (s - 1) / max(E,
# 20)))) at scheduler step s (0 until batch 10 of epoch 0, then 1; e + 1 in epoch e >= 1), and
# max(min / lr, 0) at s = 0; min = 1e-5 and max(2e-5 / 2e-4 * 1e-5, 5e-6) = 5e-6.
RELEASE_LR_20 = {  # E = 20: every dataset but ImageNet
    (0, 0): (1e-5, 5e-6), (0, 9): (1e-5, 5e-6),  # the one warm-up step: the floors
    (0, 10): (2e-4, 2e-5),  # stepped at batch len // 10 of epoch 0
    (1, 0): (1.9876883e-4, 1.9876883e-5), (10, 50): (1e-4, 1e-5),
    (13, 0): (5.4600950e-5, 5.4600950e-6), (14, 0): (4.1221475e-5, 5e-6),  # LoRA floor from 14
    (17, 0): (1.0899348e-5, 5e-6), (18, 0): (1e-5, 5e-6), (19, 99): (1e-5, 5e-6),  # floor from 18
}  # fmt: skip


@pytest.mark.parametrize(
    ("method", "dataset", "expected"),
    [
        ("dpl-release", "dtd", RELEASE_LR_20),
        ("llamp", "dtd", RELEASE_LR_20),
        # E = 5 still runs the 21-step cosine: it ends at 0.9045 of the lr (RECIPES.md: 1.81e-4)
        ("dpl-release", "imagenet", {(0, 0): (1e-5, 5e-6), (4, 0): (1.8090170e-4, 1.8090170e-5)}),
        # E = 10: cos(pi 9 / 20)
        ("llamp", "imagenet", {(0, 0): (1e-5, 5e-6), (9, 0): (1.1564345e-4, 1.1564345e-5)}),
    ],
)
def test_the_release_schedules_lr_by_epoch(method, dataset, expected):
    from dpl.schedules import group_lr

    optim = resolve_method(method, protocol="base2novel", dataset=dataset, shots=16).optim
    got = {
        (e, b): (group_lr(optim, "prompts", e, b, 100), group_lr(optim, "lora", e, b, 100))
        for e, b in expected
    }
    assert got == {k: pytest.approx(v, rel=1e-6) for k, v in expected.items()}


@pytest.mark.parametrize(("method", "protocol", "dataset", "shots", "expected", "why"), CHOICES)
def test_resolved_recipe_keeps_our_documented_choices(
    method, protocol, dataset, shots, expected, why
):
    from pathlib import Path

    from dpl.typed import to_dict

    cfg = to_dict(resolve_method(method, protocol=protocol, dataset=dataset, shots=shots))
    assert {k: _get(cfg, k) for k in expected} == expected
    deviations = (Path(__file__).parents[1] / "docs" / "deviations.md").read_text()
    assert f"## §{why} " in deviations  # the choice is declared where it says


def test_suites_resolve_each_job_with_its_protocol_dataset_and_shots():
    jobs = load_suite("fewshot", {"methods": ["coop"], "seeds": [1], "datasets": ["dtd"]}).jobs
    assert {j.train.shots: j.config.optim.epochs for j in jobs} == {
        1: 50,
        2: 100,
        4: 100,
        8: 200,
        16: 200,
    }
    (src, *targets) = load_suite("xd", {"methods": ["maple"], "seeds": [1]}).jobs
    assert src.config.optim.epochs == 2 and src.config.prompts.depth_text == 0.25  # 3 of 12
    assert all(t.source == src.id for t in targets)
    # xd and dg share one ImageNet training job when their recipes agree
    both = load_suite("all15", {"methods": ["maple"], "seeds": [1]}).jobs
    imagenet = [j for j in both if j.source is None and j.train.dataset == "imagenet"]
    assert len([j for j in imagenet if j.train.subsample == "all"]) == 1


def test_dry_run_json_prints_one_object_per_job():
    import json

    from typer.testing import CliRunner

    from dplbench.cli import app

    args = ["run", "--suite", "fewshot", "--methods", "coop,promptsrc", "--datasets", "dtd"]
    out = CliRunner().invoke(app, [*args, "--seeds", "1", "--dry-run", "--format", "json"])
    assert out.exit_code == 0, out.output
    jobs = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(jobs) == 2 * 5  # two methods, five shot counts
    coop = {j["shots"]: j for j in jobs if j["method"] == "coop"}
    assert (
        coop[1]["config"]["optim"]["epochs"] == 50 and coop[8]["config"]["optim"]["epochs"] == 200
    )
    src = next(j for j in jobs if j["method"] == "promptsrc")
    assert (src["protocol"], src["dataset"], src["seed"]) == ("fewshot", "dtd", 1)
    assert src["config"]["gpa"] == {"enabled": True, "mean": 45.0, "std": 5.0}
    assert src["evaluates"] == ["dtd/all"] and src["trains"] and len(src["job_id"]) == 16
