"""Every resolved recipe value against the releases' own configs.

The table below is transcribed by hand from the release files that configs/methods/*.yaml name:
(method, protocol, dataset, shots) -> the values a job of that cell must train with. It does not
read configs/methods: a drift in either shows here.
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

RECIPES = [
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
    ("coop", "dg", "imagenet", 16, {"optim.epochs": 50, "prompts.n_ctx_text": 4}),
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
        for p, d in (("base2novel", "eurosat"), ("base2novel", "imagenet"), ("fewshot", "dtd"))
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
        ("promptsrc", "fewshot", d, 4, {"optim.epochs": 50, "gpa.mean": 45.0, "gpa.std": 5.0})
        for d in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")
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
        for p, d, e in (("base2novel", "dtd", 20), ("base2novel", "imagenet", 5),
                        ("longtail", "eurosat", 20), ("xd", "imagenet", 5))
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
    ("clip_lora", "base2novel", "dtd", 16, {"optim.iterations": 8000}),
]  # fmt: skip


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize(("method", "protocol", "dataset", "shots", "expected"), RECIPES)
def test_resolved_recipe_matches_the_release(method, protocol, dataset, shots, expected):
    from dpl.config import to_dict

    cfg = to_dict(resolve_method(method, protocol=protocol, dataset=dataset, shots=shots))
    got = {k: _get(cfg, k) for k in expected}
    assert got == expected


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
