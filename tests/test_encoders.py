"""The prompted encoders reproduce open_clip exactly when nothing is added."""

import open_clip
import pytest
import torch

from dpl.backbone import BackboneConfig, load_clip, resolve_quick_gelu
from dpl.encoders import TextEncoder, VisionEncoder
from dpl.methods import build_method, method_config

TEXTS = ["a photo of a dog.", "x", "a much longer sentence about a red sports car at night"]


def _randomised(model: str):
    clip = load_clip(BackboneConfig(model=model, pretrained=None))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in clip.parameters():  # random-init CLIP has tiny-scale weights; make them matter
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return clip


@pytest.mark.parametrize(
    "model", ["dpl-tiny", "dpl-tiny-quickgelu", pytest.param("ViT-B-16", marks=pytest.mark.slow)]
)
def test_encoders_equal_open_clip(model):
    clip = _randomised(model)
    size = clip.visual.image_size[0]
    images = torch.randn(2, 3, size, size)
    tokens = open_clip.get_tokenizer(model)(TEXTS)
    with torch.no_grad():
        v = VisionEncoder(clip.visual)(images)
        e, eot = TextEncoder(clip).embed(tokens)
        t = TextEncoder(clip)(e, eot)
        torch.testing.assert_close(v, clip.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t, clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_method_without_prompts_lora_dropout_equals_open_clip():
    clip = _randomised("dpl-tiny")
    cfg = method_config(
        "ivlp",
        {
            "backbone": {"model": "dpl-tiny", "pretrained": None},
            "prompts": {"n_ctx_text": 0, "n_ctx_vision": 0},
        },
    )
    model = build_method(cfg, clip)
    model.set_classes(["dog", "red car"], "a photo of a {}.")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = model.image_features(images)
        t = model.text_features()
        prompts = ["a photo of a dog.", "a photo of a red car."]  # ctx_init words, frozen
        ref_t = clip.encode_text(open_clip.get_tokenizer("dpl-tiny")(prompts))
    torch.testing.assert_close(f, clip.encode_image(images), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t, ref_t, atol=1e-5, rtol=1e-5)


def test_lora_is_identity_at_init_and_merges_exactly_in_eval():
    clip = _randomised("dpl-tiny")
    cfg = method_config(
        "dpl",
        {
            "backbone": {"model": "dpl-tiny", "pretrained": None},
            "prompts": {"n_ctx_vision": 0},
            "lora": {"layers": [2, 3], "dropout": 0.0},
            "iwtd": {"enabled": False},
            "mag": {"enabled": False},
        },
    )
    model = build_method(cfg, clip)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.image_features(images), clip.encode_image(images))
        for lora in model.vision.lora.values():
            lora.b.normal_(0, 0.1)
        model.train()
        unmerged = model.image_features(images)
        model.eval()
        merged = model.image_features(images)
    assert not torch.allclose(unmerged, clip.encode_image(images), atol=1e-4)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_quick_gelu_resolution(tmp_path):
    assert resolve_quick_gelu(BackboneConfig(model="ViT-B-16", pretrained="openai")) is True
    assert (
        resolve_quick_gelu(BackboneConfig(model="ViT-B-16", pretrained="laion2b_s34b_b88k"))
        is False
    )
    assert (
        resolve_quick_gelu(BackboneConfig(model="ViT-B-16-quickgelu", pretrained="openai")) is False
    )
    # A local file that is neither an OpenAI archive nor declared: refuse to guess.
    clip = load_clip(BackboneConfig(model="dpl-tiny", pretrained=None))
    path = tmp_path / "weights.pt"
    torch.save(clip.state_dict(), path)
    with pytest.raises(ValueError, match="quick_gelu"):
        resolve_quick_gelu(BackboneConfig(model="dpl-tiny", pretrained=str(path)))
    loaded = load_clip(BackboneConfig(model="dpl-tiny", pretrained=str(path), quick_gelu=False))
    for a, b in zip(loaded.parameters(), clip.parameters()):
        assert torch.equal(a, b)
    assert all(not p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match="neither a file nor a tag"):
        resolve_quick_gelu(BackboneConfig(model="dpl-tiny", pretrained=str(tmp_path / "nope.pt")))
