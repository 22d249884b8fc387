"""`dpl-release` and `llamp` as their releases train them (issue #19): the teacher text from the
LLM's descriptions against a hand computation with open_clip's own encoder, the teacher's image
tower with the current LoRA, the releases' prompt initialisation, MAG over every text position.
Issue #26: each dataset's teacher template against the releases' tables, LoRA dropout drawn per
projection at p = 0.1, and the pads reaching MAG inside the model."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dpl.config import MAGConfig
from dpl.mag import MAGBridge
from dpl.methods import build_method, method_config
from dplbench.plan.methods import resolve_method
from tests.conftest import llm_overrides, tiny, tiny_llm_cache

CLASSES = ["dog", "cat", "red car", "sunflower"]


def _model(name: str, **over):
    cfg = resolve_method(name, tiny({**llm_overrides(name), **over}), protocol="base2novel")
    model = build_method(cfg)
    model.set_classes(CLASSES, "a photo of a {}.", "synthetic")
    return model


@pytest.mark.parametrize(
    ("method", "string"),
    [
        # DroPLe tools/extract_clip_text_features_zs.py :129-134 (the 'dw' branch)
        ("dpl-release", lambda name, chunk: f"a photo of a {name} with {chunk}"),
        # LLaMP tools/extract_clip_text_features_zs.py :82-90 ("with" glued on, as written)
        ("llamp", lambda name, chunk: f"a photo of a {name}.with {chunk}"),
    ],
)
def test_teacher_text_is_the_releases_target_computed_by_hand(method, string):
    model = _model(method)
    recipe = "drople" if method == "dpl-release" else "llamp"
    cache = Path(tiny_llm_cache(recipe))
    texts = json.loads((cache / "synthetic.json").read_text())[0]  # the first template
    manifest = json.loads((cache / "manifest.json").read_text())
    order = manifest["datasets"]["synthetic"]["classes"]
    clip, tokenizer = model.clip, model.tokenizer
    expected = []
    for name in CLASSES:
        i = order.index(name)
        # without spaCy the cache keeps the description as the class's one phrase
        chunks = texts["chunks"][i] if "chunks" in texts else [texts["descriptions"][i]]
        strings = [string(name, c) for c in chunks] or [f"a photo of a {name}."]
        with torch.no_grad():
            feats = F.normalize(clip.encode_text(tokenizer(strings)).float(), dim=-1)
        expected.append(F.normalize(feats.mean(0), dim=-1))
    torch.testing.assert_close(model.classes.frozen_text, torch.stack(expected))
    plain = _model(method, teacher={"text": "template"}).classes.frozen_text
    assert not torch.allclose(plain, model.classes.frozen_text)  # not the template's


def test_the_release_teacher_sees_the_current_lora_and_its_dropout():
    model = _model("dpl-release")
    assert model.cfg.teacher.adapters == "release"
    with torch.no_grad():
        for lora in model.vision.lora.values():
            lora.b.normal_(0, 0.5)  # a LoRA that has learnt something
    images = torch.randn(3, 3, 32, 32)
    keys = ["a", "b", "c"]
    model.eval()  # dropout off: the teacher is the learnable tower without prompts or IWTD
    teacher = model.frozen_image_features(images, keys)
    tower = F.normalize(model.vision(images, prompts=None, hook=None).float(), dim=-1)
    torch.testing.assert_close(teacher, tower)
    original = F.normalize(model.vision(images, adapters=False).float(), dim=-1)
    assert not torch.allclose(teacher, original, atol=1e-4)
    model.train()  # in training its LoRA dropout draws anew each time, and nothing is cached
    torch.manual_seed(0)
    first = model.frozen_image_features(images, keys)
    assert not torch.allclose(first, model.frozen_image_features(images, keys))
    assert not model._frozen_images
    ours = _model("dpl")  # dpl keeps the original CLIP as its anchor (docs/deviations.md §2)
    assert ours.cfg.teacher.adapters == "none"


def _values(prompts) -> list[torch.Tensor]:
    return [p.detach() for p in prompts.layers]


@pytest.mark.parametrize("method", ["dpl", "dpl-release", "llamp"])
def test_the_dpl_releases_draw_prompts_uniform_within_one_over_root_fan_in(method):
    over = {"backbone": {"model": "ViT-B-16", "pretrained": None}, **llm_overrides(method)}
    cfg = method_config(method, over)
    assert cfg.prompts.init == "kaiming"
    from dplbench.run.worker import frozen_clip

    torch.manual_seed(0)
    model = build_method(cfg, frozen_clip(cfg.backbone))
    text = _values(model.text_prompts)[1:]  # layer 0 is the words "a photo of a"
    vision = _values(model.vision_prompts)
    bound_t, bound_v = 1 / math.sqrt(512), 1 / math.sqrt(4 * 768)  # 0.0442, 0.0180
    assert len(text) == 8 and len(vision) == 6
    for values, bound in ((torch.cat(text), bound_t), (torch.cat(vision), bound_v)):
        assert values.abs().max() <= bound
        assert values.abs().max() > 0.95 * bound  # uniform up to the bound
        assert values.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)


@pytest.mark.parametrize("method", ["coop", "ivlp", "maple", "promptsrc"])
def test_the_dassl_releases_draw_prompts_from_a_normal_with_std_002(method):
    cfg = method_config(method, {"backbone": {"model": "ViT-B-16", "pretrained": None},
                                 **({"prompts": {"ctx_init": ""}} if method == "coop" else {})})  # fmt: skip
    assert cfg.prompts.init == "normal" and cfg.prompts.init_std == 0.02
    from dplbench.run.worker import frozen_clip

    torch.manual_seed(0)
    model = build_method(cfg, frozen_clip(cfg.backbone))
    values = torch.cat([v.flatten() for v in _values(model.text_prompts)[1:]] or [
        model.text_prompts.layers[0].detach().flatten()
    ])  # fmt: skip
    assert values.std() == pytest.approx(0.02, rel=0.1)
    assert values.abs().max() > 3 * 0.02  # a normal's tails, not a uniform's edge


def test_mag_attends_over_every_text_position_or_only_the_valid_ones():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)  # two sequences of 5 positions
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # the first: 2 pads
    for tokens in ("all", "valid"):
        bridge = MAGBridge(8, 8, MAGConfig(enabled=True, tokens=3, dim=4, text_tokens=tokens))
        attn = bridge.attend(x, "text", valid)
        z = bridge.proj["text"](x.reshape(1, -1, 8)).view(2, 5, -1)  # one member's W x + b
        logits = torch.einsum("md,bsd->bms", bridge.tokens[0], z)  # τ = 1
        if tokens == "valid":
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        torch.testing.assert_close(attn, logits.softmax(-1))
        assert (attn[0, :, 3:] > 0).all() == (tokens == "all")  # padding attended or not
        vision = bridge.attend(x, "vision", torch.ones(2, 5, dtype=torch.bool))
        assert vision.shape == (2, 3, 5)
    assert method_config("dpl-release", {}).mag.text_tokens == "all"  # DroPLe masks nothing


def test_the_suffix_pads_are_eot_embeddings_as_the_releases_hf_tokenizer_pads():
    # DroPLe drople.py:140-142 / LLaMP llamp.py:100-102 pad with CLIPTokenizer's pad_token, which
    # is <|endoftext|>; open_clip pads with 0. Every position past a class's own [EOT] must read
    # as [EOT] plus its position, those the encoder sees (before L0-1, which the layout drops) too.
    model = _model("dpl-release")
    names = [*CLASSES, "hot air balloon"]  # in the tiny cache, two tokens longer than "dog"
    model.set_classes(names, "a photo of a {}.", "synthetic")
    cs, clip = model.classes, model.clip
    ids = model.tokenizer([f"{model.prompt_prefix} {n}" for n in names])
    eot_id = int(ids[0, cs.eot[0]])
    l0 = int(cs.eot.max()) + 1
    short = int(cs.eot.argmin())
    first_pad = int(cs.eot[short]) + 1
    assert first_pad < l0 - 1  # at least one pad the encoder reads
    with torch.no_grad():
        want = clip.token_embedding.weight[eot_id] + clip.positional_embedding[:l0]
    got = cs.embedded[short, first_pad:l0]
    torch.testing.assert_close(got, want[first_pad:l0].to(got.dtype))


# --- teacher text: each release's template per dataset ------------------------------------------
# (template, line) per dataset (dplbench's names) as each release's tool writes its text target:
# CUSTOM_TEMPLATES of tools/extract_clip_text_features_zs.py, DroPLe :18-34 (datasets it does not
# name: "a photo of a {}.", :79), LLaMP :14-30. Transcribed from the releases, not from dpl/.
RELEASE_TEACHER_TEMPLATES = {
    "drople": {  # JustCoolPig/DroPLe @ 3c2ef2a tools/extract_clip_text_features_zs.py
        "oxford_pets": ("a type of pet, a photo of a {}.", 19),
        "oxford_flowers": ("a type of flower, a photo of a {}.", 20),
        "fgvc_aircraft": ("a type of aircraft, a photo of a {}.", 21),
        "dtd": ("a texture of {}.", 22),
        "eurosat": ("a centered satellite photo of {}.", 23),
        "stanford_cars": ("a photo of a {}.", 24),
        "food101": ("a type of food, a photo of {}.", 25),
        "sun397": ("a photo of a {}.", 26),
        "caltech101": ("a photo of a {}.", 27),
        "ucf101": ("a photo of a person doing {}.", 28),
        "imagenet": ("a photo of a {}.", 29),
        "imagenet_sketch": ("a photo of a {}.", 30),
        "imagenetv2": ("a photo of a {}.", 31),
        "imagenet_a": ("a photo of a {}.", 32),
        "imagenet_r": ("a photo of a {}.", 33),
        "synthetic": ("a photo of a {}.", 79),  # CUSTOM_TEMPLATES.get(dataset, "a photo of a {}.")
    },
    "llamp": {  # zhaohengz/LLaMP @ 3dec7f3 tools/extract_clip_text_features_zs.py
        "oxford_pets": ("a photo of a {}, a type of pet.", 15),
        "oxford_flowers": ("a photo of a {}, a type of flower.", 16),
        "fgvc_aircraft": ("a photo of a {}, a type of aircraft.", 17),
        "dtd": ("{} texture.", 18),
        "eurosat": ("a centered satellite photo of {}.", 19),
        "stanford_cars": ("a photo of a {}.", 20),
        "food101": ("a photo of {}, a type of food.", 21),
        "sun397": ("a photo of a {}.", 22),
        "caltech101": ("a photo of a {}.", 23),
        "ucf101": ("a photo of a person doing {}.", 24),
        "imagenet": ("a photo of a {}.", 25),
        "imagenet_sketch": ("a photo of a {}.", 26),
        "imagenetv2": ("a photo of a {}.", 27),
        "imagenet_a": ("a photo of a {}.", 28),
        "imagenet_r": ("a photo of a {}.", 29),
    },
}


def _release_strings(recipe: str, template: str, name: str, chunks: list[str]) -> list[str]:
    """The strings a release's tool encodes for one class. DroPLe :111, :131-137: the template
    without its final '.', " with ", the chunk; no chunk: the template alone (:124-129). LLaMP
    :83-89: the template, "with " glued on, the chunk (it has no no-chunk case: a mean over
    nothing; ours takes the template, docs/deviations.md §2)."""
    base = template.format(name)
    if not chunks:
        return [base]
    if recipe == "drople":
        return [f"{base.rstrip('.')} with {c}" for c in chunks]
    return [f"{base}with {c}" for c in chunks]


@pytest.mark.parametrize(
    ("recipe", "dataset"), [(r, d) for r, table in RELEASE_TEACHER_TEMPLATES.items() for d in table]
)
def test_each_datasets_teacher_template_is_the_releases(recipe, dataset):
    from dpl.llm.teacher import teacher_strings

    template, _line = RELEASE_TEACHER_TEMPLATES[recipe][dataset]
    chunks = ["a long tail", "pointed ears"]
    got = teacher_strings(recipe, dataset, "red car", chunks)
    assert got == _release_strings(recipe, template, "red car", chunks)
    if recipe == "drople":
        assert teacher_strings(recipe, dataset, "red car", []) == [template.format("red car")]


def _cache_under_names(recipe: str, datasets, root: Path) -> str:
    """The tiny cache of `recipe` with its `synthetic` entry also filed under each of `datasets`
    (the same classes, descriptions, keys and values: only the name differs, and with it the
    teacher's template)."""
    import shutil

    out = root / recipe
    shutil.copytree(tiny_llm_cache(recipe), out)
    manifest = json.loads((out / "manifest.json").read_text())
    for d in (d for d in datasets if d != "synthetic"):
        manifest["datasets"][d] = manifest["datasets"]["synthetic"]
        shutil.copy(out / "synthetic.json", out / f"{d}.json")
    (out / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


@pytest.mark.parametrize("method", ["dpl-release", "llamp"])
def test_the_model_takes_its_teacher_template_from_the_dataset_it_is_given(method, tmp_path):
    """set_classes(names, template, dataset), as train_loop/evaluate call it: the teacher text of
    each dataset is its release template's, computed by hand through the same CLIP."""
    from dpl.llm.teacher import chunks_of
    from tests.conftest import tiny_llm

    recipe = "drople" if method == "dpl-release" else "llamp"
    table = RELEASE_TEACHER_TEMPLATES[recipe]
    cache = _cache_under_names(recipe, table, tmp_path)
    model = _model(method, llm={"cache": cache, "model": tiny_llm()})
    entry = json.loads((Path(cache) / "manifest.json").read_text())["datasets"]["synthetic"]
    first = json.loads((Path(cache) / "synthetic.json").read_text())[0]  # the first template
    kind = entry.get("phrases", "description")
    clip, tokenizer = model.clip, model.tokenizer
    seen = {}
    for dataset, (template, _line) in table.items():
        model.set_classes(CLASSES, "a photo of a {}.", dataset)  # the harness's template: unused
        expected = []
        for name in CLASSES:
            chunks = chunks_of(first, entry["classes"].index(name), kind)
            strings = _release_strings(recipe, template, name, chunks)
            with torch.no_grad():
                feats = F.normalize(clip.encode_text(tokenizer(strings)).float(), dim=-1)
            expected.append(F.normalize(feats.mean(0), dim=-1))
        got = model.classes.frozen_text
        torch.testing.assert_close(got, torch.stack(expected), msg=f"{method} on {dataset}")
        seen.setdefault(template, got)
    assert len(seen) > 1  # the templates differ, and so do the targets


# --- LoRA dropout: each projection draws its own mask ---------------------------------------------


@pytest.mark.parametrize("method", ["dpl-release", "llamp"])
def test_the_release_lora_drops_q_and_v_inputs_apart_at_p_01(method):
    """peft's LoRA Linear holds its own nn.Dropout(lora_dropout) per wrapped projection (DroPLe
    drople.py:92-98, LLaMP llamp.py:59-62, lora_dropout 0.1 from their launch.sh): q and v draw
    independent masks, each dropping at 0.1. A full-rank identity LoRA (scale alpha / r = 1)
    makes each delta the dropped input itself, so its zeros are the mask."""
    from dpl.members import Streams

    width = 64  # dpl-tiny's vision width
    model = _model(method, lora={"rank": width, "alpha": float(width)})  # dropout: the release's
    lora = next(iter(model.vision.lora.values()))
    assert lora.targets == ("q", "v")
    with torch.no_grad():
        lora.a.copy_(torch.eye(width).expand_as(lora.a))
        lora.b.copy_(torch.eye(width).expand_as(lora.b))
    lora.train()
    h = torch.ones(64, 50, width)  # [N,S,D]

    def draws(seed: int, times: int = 5) -> dict[str, torch.Tensor]:
        streams = Streams([torch.Generator().manual_seed(seed)])
        out = {"q": [], "v": []}
        for _ in range(times):
            delta = lora.delta(h, streams)
            for t in out:
                out[t].append(delta[t])
        return {t: torch.stack(v) for t, v in out.items()}

    p = 0.1
    deltas = draws(0)
    kept = {t: (d != 0).flatten().float() for t, d in deltas.items()}
    n = kept["q"].numel()  # 1,024,000 Bernoulli draws per projection
    for t, d in deltas.items():
        torch.testing.assert_close(d[d != 0], torch.full_like(d[d != 0], 1 / (1 - p)))
        rate = 1 - kept[t].mean().item()
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n), (t, rate)  # 5 binomial std
    # independent masks: both dropped at p^2, and uncorrelated (a shared mask: p and 1)
    both = ((1 - kept["q"]) * (1 - kept["v"])).mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n), both
    corr = torch.corrcoef(torch.stack([kept["q"], kept["v"]]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(n), corr
    # each call draws anew, and the same generator draws the same masks
    again = (deltas["q"][1] != 0).flatten().float()
    assert abs(torch.corrcoef(torch.stack([kept["q"][: again.numel()], again]))[0, 1]) < 0.05
    assert all(torch.equal(deltas[t], draws(0)[t]) for t in deltas)


# --- MAG reads the pads inside the model --------------------------------------------------------


def test_the_pads_reach_mag_inside_the_release_model_unless_text_tokens_is_valid():
    """DroPLe's MAG softmaxes over the text layer's whole output (multimodal_alignment.py:66-81),
    so a class's pads (past its own [EOT], before the encoder's length) reach MAG: moving the
    embedding at one pad moves the MAG loss and nothing else (pads are masked as keys). With
    mag.text_tokens="valid" the same change leaves the MAG loss as it was, while a name token
    still moves it. IWTD is off here: its scores read the pads as queries too."""
    names = [*CLASSES, "hot air balloon"]  # "dog" has two more pads the encoder reads

    def terms(model, labels) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        images = torch.randn(len(labels), 3, 32, 32, generator=g)
        batch = {"image": images, "clean": images, "label": labels,
                 "key": [str(i) for i in range(len(labels))]}  # fmt: skip
        return {k: v.detach() for k, v in model.losses(batch, 0, 2, generator=g).items()}

    for tokens in ("all", "valid"):
        model = _model("dpl-release", iwtd={"enabled": False}, mag={"text_tokens": tokens})
        model.set_classes(names, "a photo of a {}.", "synthetic")
        model.train()
        cs = model.classes
        short = int(cs.eot.argmin())
        pad, l0 = int(cs.eot[short]) + 1, int(cs.eot.max()) + 1
        assert pad < l0 - 1  # a pad the encoder reads (the layout drops position L0-1)
        labels = torch.tensor([short, short, (short + 1) % len(names)])  # MAG reads these rows
        before = terms(model, labels)
        assert set(before) >= {"ce", "mag"}
        torch.testing.assert_close(terms(model, labels), before, rtol=0, atol=0)  # deterministic
        with torch.no_grad():
            cs.embedded[short, pad] += torch.randn(cs.embedded.shape[-1]) * 4
        after = terms(model, labels)
        others = {k: v for k, v in after.items() if k != "mag"}
        torch.testing.assert_close(others, {k: before[k] for k in others})  # only MAG reads pads
        if tokens == "all":
            assert not torch.allclose(after["mag"], before["mag"], rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(after["mag"], before["mag"])
            with torch.no_grad():  # a valid position (the last name token) still moves it
                cs.embedded[short, pad - 2] += torch.randn(cs.embedded.shape[-1]) * 4
            moved = terms(model, labels)["mag"]
            assert not torch.allclose(moved, before["mag"], rtol=1e-4, atol=1e-6)
