"""Every resolved recipe value against the releases' own configs, and our own choices apart.

RELEASE is transcribed by hand from the release files that configs/methods/*.yaml name, each row
with its file: (method, protocol, dataset, shots) -> the values a job of that cell must train with.
CHOICES holds what the releases do not say or say otherwise, each row pointing at its entry in
docs/deviations.md. Neither reads configs/methods: a drift in either shows here.
"""

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
    # dpl-release's LLM source and teacher: launch.sh (--num_llm_prompts 24, --llm_prompt_depth
    # 9, --model_base Meta-Llama-3-8B-Instruct), drople.py:194-202 (the 'dw' text target),
    # :185-186 and :848-851 (the teacher's tower carries LoRA); epochs as dpl
    ("dpl-release", "base2novel", "dtd", 16, {"llm.n_tokens": 24, "llm.depth": 0.75,
     "llm.recipe": "drople", "llm.model": "meta-llama/Meta-Llama-3-8B-Instruct",
     "teacher.text": "drople", "teacher.adapters": "release", "optim.epochs": 20}),
    ("dpl-release", "base2novel", "imagenet", 16, {"optim.epochs": 5}),
    # llamp: launch.sh --num_llm_prompts 16, configs/llava/*.yml (Llama-2-7b-chat, ImageNet 10
    # epochs), tools/extract_clip_text_features_zs.py (its text target), llamp.py:130, 601-604
    ("llamp", "base2novel", "dtd", 16, {"llm.n_tokens": 16, "llm.recipe": "llamp",
     "llm.model": "meta-llama/Llama-2-7b-chat-hf", "teacher.text": "llamp",
     "teacher.adapters": "release", "prompts.init": "kaiming", "optim.epochs": 20,
     "iwtd.enabled": False, "mag.enabled": False, "rer.enabled": False}),
    ("llamp", "base2novel", "imagenet", 16, {"optim.epochs": 10}),
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
    from dpl.config import to_dict

    cfg = to_dict(resolve_method(method, protocol=protocol, dataset=dataset, shots=shots))
    got = {k: _get(cfg, k) for k in expected}
    assert got == expected


@pytest.mark.parametrize(("method", "protocol", "dataset", "shots", "expected", "why"), CHOICES)
def test_resolved_recipe_keeps_our_documented_choices(
    method, protocol, dataset, shots, expected, why
):
    from pathlib import Path

    from dpl.config import to_dict

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
