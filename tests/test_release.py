"""`dpl-release` and `llamp` as their releases train them (issue #19): the teacher text from the
LLM's descriptions against a hand computation with open_clip's own encoder, the teacher's image
tower with the current LoRA, the releases' prompt initialisation, MAG over every text position."""

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
