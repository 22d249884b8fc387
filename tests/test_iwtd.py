"""IWTD (docs/dpl.md §3): scores, the p mapping, selection rates, target masks, drop modes."""

import open_clip
import pytest
import torch

import dpl.encoders as encoders
from dpl import importance as imp
from dpl.encoders import TextEncoder, VisionEncoder
from dpl.mag import MAGBridge, MAGConfig
from dpl.members import Streams
from dpl.methods import build_method, method_config
from dpl.token_dropout import IWTDConfig, IWTDHook, drop_factor, select_tokens
from tests.conftest import tiny


def _attention(B=3, H=2, S=7, mask=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, H, S, S, generator=g)
    if mask is not None:
        logits = logits + mask
    return logits.softmax(-1)


def _vision_layout(B, S):
    return VisionEncoder.layout(B, S, torch.device("cpu"))


def _text_layout():
    eot = torch.tensor([7, 9, 6])  # three class prompts of different lengths, padded to 12
    return TextEncoder.layout(eot, 12, prompt_start=1, n_ctx=4, device=torch.device("cpu")), eot


def test_scores_sum_to_one_over_content_and_skip_global():
    B, S = 3, 7
    lay = _vision_layout(B, S)
    attn = _attention(B, S=S)
    mag = MAGBridge(16, 16, MAGConfig(tokens=5, dim=8))
    mag_attn = mag.attend(torch.randn(B, S, 16), "vision", lay.valid)
    for s in (
        imp.self_score(attn, lay.content),
        imp.cls_score(attn, lay.global_index, lay.content),
        imp.cross_score(mag_attn, lay.content),
        imp.uniform_score(lay.content),
    ):
        torch.testing.assert_close(s.sum(-1), torch.ones(B))
        assert (s[:, 0] == 0).all()  # [CLS] is never a content token
        assert (s >= 0).all()

    lay_t, eot = _text_layout()
    causal = torch.full((12, 12), float("-inf")).triu(1)
    attn_t = _attention(3, S=12, mask=causal)
    s = imp.cls_score(attn_t, lay_t.global_index, lay_t.content)
    torch.testing.assert_close(s.sum(-1), torch.ones(3))
    for b in range(3):
        assert (s[b, eot[b] :] == 0).all()  # [EOT] and padding carry no importance


def test_scores_match_hand_computation():
    # One sample, one head, 3 tokens: [CLS], t1, t2.
    a = torch.tensor([[[[0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.7, 0.1, 0.2]]]])
    lay = _vision_layout(1, 3)
    # S_cls: row of [CLS] over content tokens: 0.5, 0.3 -> 0.625, 0.375
    torch.testing.assert_close(
        imp.cls_score(a, lay.global_index, lay.content), torch.tensor([[0.0, 0.625, 0.375]])
    )
    # S_self: t1 -> max over content k != t1 = A[1,2] = 0.3; t2 -> A[2,1] = 0.1 -> 0.75, 0.25
    torch.testing.assert_close(imp.self_score(a, lay.content), torch.tensor([[0.0, 0.75, 0.25]]))


def test_drop_probability_range_and_order():
    B, S = 4, 9
    lay = _vision_layout(B, S)
    importance = imp.cls_score(_attention(B, S=S), lay.global_index, lay.content)
    p = imp.drop_probability(importance, lay.content, p_min=0.1, p_max=0.5)
    c = lay.content
    assert (p[c] >= 0.1 - 1e-6).all() and (p[c] <= 0.5 + 1e-6).all()
    masked = importance.masked_fill(~c, -1)
    top = masked.argmax(-1)
    bottom = importance.masked_fill(~c, 2).argmin(-1)
    torch.testing.assert_close(p[torch.arange(B), top], torch.full((B,), 0.1))
    torch.testing.assert_close(p[torch.arange(B), bottom], torch.full((B,), 0.5))
    assert (p[:, 0] == 0).all()
    # Equal importance: every token at p_max (plain token dropout).
    flat = imp.drop_probability(imp.uniform_score(c), c, 0.1, 0.5)
    torch.testing.assert_close(flat[c], torch.full_like(flat[c], 0.5))


def test_selection_rate_matches_p():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.0, 0.1, 0.25, 0.5, 0.8]]).expand(20000, -1)
    target = torch.ones_like(p, dtype=torch.bool)
    rate = select_tokens(p, target, torch.rand(p.shape, generator=g)).float().mean(0)
    torch.testing.assert_close(rate, p[0], atol=0.015, rtol=0)
    # Non-target tokens are never selected, whatever their p.
    target[:, 2] = False
    assert not select_tokens(p, target, torch.rand(p.shape, generator=g))[:, 2].any()


def drop_tokens(x, p, target, mode, sigma=0.03, generator=None):
    """What the IWTD hook does to a layer's output: x times the drop factor, its draws (u, then
    ε in noise mode) from `generator` as the hook draws them from a member's stream."""
    u = torch.rand(p.shape, generator=generator)
    eps = torch.randn(x.shape, generator=generator) if mode == "noise" else None
    return x * drop_factor(p, target, mode, sigma, u, eps)


def test_noise_mode_is_multiplicative_with_mean_one_and_sigma():
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 5000, 16), 2.0)
    p = torch.ones(2, 5000)
    target = torch.ones(2, 5000, dtype=torch.bool)
    target[:, :10] = False
    out = drop_tokens(x, p * 0.99, target, "noise", sigma=0.03, generator=g)
    assert torch.equal(out[:, :10], x[:, :10])
    eps = out[:, 10:] / x[:, 10:]
    assert abs(eps.mean().item() - 1) < 1e-3
    assert abs(eps.std().item() - 0.03) < 1e-3


def test_zero_mode_zeroes_and_rescales():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 4)
    p = torch.tensor([[0.0, 0.5, 0.5, 0.2, 0.2, 0.4]])
    target = torch.tensor([[False, True, True, True, True, False]])
    out = drop_tokens(x, p, target, "zero", generator=g)
    sel = select_tokens(p, target, torch.rand(p.shape, generator=torch.Generator().manual_seed(0)))
    for j in range(6):
        if sel[0, j]:
            assert (out[0, j] == 0).all()
        elif target[0, j]:
            torch.testing.assert_close(out[0, j], x[0, j] / (1 - p[0, j]))
        else:
            assert torch.equal(out[0, j], x[0, j])
    # Expectation preserved over draws.
    xs = torch.ones(4000, 6, 1)
    mean = drop_tokens(xs, p.expand(4000, -1), target.expand(4000, -1), "zero").mean(0)
    torch.testing.assert_close(mean[target[0]], torch.ones(4, 1), atol=0.05, rtol=0)


def test_only_target_text_tokens_change():
    lay, eot = _text_layout()
    cfg = IWTDConfig(
        enabled=True, importance=("cls", "self", "cross"), p_min=0.9, p_max=0.95, drop_mode="zero"
    )
    mag = MAGBridge(16, 16, MAGConfig(tokens=4, dim=8))
    hook = IWTDHook([cfg], {"text": 1}, mag)
    x = torch.randn(3, 12, 16)
    causal = torch.full((12, 12), float("-inf")).triu(1)
    out = hook(x, _attention(3, S=12, mask=causal), "text", 0, lay)
    changed = (out != x).any(-1)
    assert changed.any()
    assert not changed[~lay.target].any()  # class names, [EOT], padding bit-identical
    assert lay.target[:, :5].all() and not lay.target[:, 5:].any()  # SOT + 4 ctx


def _dpl(**over):
    cfg = method_config("dpl", tiny({"lora": {"layers": [2, 3]}, **over}))
    model = build_method(cfg)
    model.set_classes(["dog", "cat", "red car"], "a photo of a {}.")
    return model


def test_eval_is_deterministic_without_attention_maps_and_equals_iwtd_off(monkeypatch):
    calls = []
    real = encoders._attention

    def spy(mha, h, mask, lora, need_weights, streams=None):
        calls.append(need_weights)
        return real(mha, h, mask, lora, need_weights, streams)

    monkeypatch.setattr(encoders, "_attention", spy)
    torch.manual_seed(0)
    model = _dpl()
    torch.manual_seed(0)
    plain = _dpl(iwtd={"enabled": False}, mag={"enabled": False})
    plain.load_trainable_state(
        {k: v for k, v in model.trainable_state().items() if not k.startswith("mag.")}
    )
    images = torch.randn(4, 3, 32, 32)
    model.train()
    model.losses({"image": images, "label": torch.tensor([0, 1, 2, 0]), "clean": images})
    assert any(calls)  # training computes per-head maps where importance needs them
    calls.clear()
    model.eval()
    plain.eval()
    with torch.no_grad():
        a, b = model.logits(images), model.logits(images)
        c = plain.logits(images)
    assert not any(calls)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c)


def test_training_forward_perturbs_only_in_training():
    model = _dpl()
    images = torch.randn(2, 3, 32, 32)
    model.train()
    s1, s2 = Streams.seeded([1], images.device), Streams.seeded([2], images.device)
    labels = torch.tensor([0, 1])
    hook1, hook2 = model._hook(s1, labels), model._hook(s2, labels)
    f1 = model.image_features(images, hook1, s1)
    f2 = model.image_features(images, hook2, s2)
    assert not torch.allclose(f1, f2)  # fresh draws differ
    assert len(hook1.captured["vision"]) == model.mag_layers


@pytest.mark.parametrize(
    "bad",
    [
        {"importance": []},
        {"importance": ["cls", "uniform"]},
        {"drop_mode": "mask"},
        {"p_min": 0.6, "p_max": 0.5},
    ],
)
def test_bad_iwtd_configs_raise(bad):
    with pytest.raises(ValueError, match="iwtd"):
        method_config("dpl", tiny({"iwtd": bad}))


def test_text_layout_from_real_tokens():
    tok = open_clip.get_tokenizer("dpl-tiny")(["a photo of a dog.", "a photo of a red sports car."])
    eot = tok.argmax(-1)
    lay = TextEncoder.layout(eot, int(eot.max()) + 1, 1, 4, torch.device("cpu"))
    assert lay.target[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert lay.content[0].sum() == eot[0]  # SOT..'.' without EOT
