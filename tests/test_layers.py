"""Layer settings carry over between towers: depths and LoRA layers as fractions of the tower give
the papers' ViT-B/16 values on 12 layers and scale with deeper and shallower towers."""

import pytest

from dpl.layers import resolve_depth, resolve_layers
from dpl.methods import build_method, method_config
from tests.conftest import tiny


def test_fractions_give_the_vit_b16_values_and_scale():
    assert resolve_depth(0.75, 12) == 9 and resolve_depth(0.5, 12) == 6
    assert resolve_depth(0.75, 24) == 18 and resolve_depth(0.25, 12) == 3
    assert resolve_depth(9, 12) == 9 and resolve_depth(9, 4) == 4  # counts stay counts
    assert resolve_layers("0.5:1", 12) == tuple(range(6, 12))
    assert resolve_layers("0.5:1", 24) == tuple(range(12, 24))
    assert resolve_layers("all", 4) == (0, 1, 2, 3) and resolve_layers("2:", 6) == (2, 3, 4, 5)
    assert resolve_layers((6, 7, 11, 30), 12) == (6, 7, 11)
    with pytest.raises(ValueError):
        resolve_depth(1.5, 12)


@pytest.mark.parametrize(("model", "layers"), [("dpl-tiny", 4), ("dpl-tiny-deep", 8)])
def test_dpl_defaults_on_towers_of_other_depths_and_widths(model, layers):
    cfg = method_config("dpl", tiny({"backbone": {"model": model}}))
    m = build_method(cfg)
    assert m.depth_text == round(0.75 * layers) and m.depth_vision == layers // 2
    assert sorted(int(k) for k in m.vision.lora) == list(range(layers // 2, layers))
    assert m.iwtd_layers == {"text": m.depth_text, "vision": m.depth_vision}
    width = m.clip.visual.transformer.width
    assert next(iter(m.vision.lora.values())).a.shape[-1] == width
    m.set_classes(["dog", "cat"], "a photo of a {}.")
    import torch

    loss = sum(
        m.losses(
            {"image": torch.randn(2, 3, 32, 32), "clean": torch.randn(2, 3, 32, 32),
             "label": torch.tensor([0, 1]), "key": ["a", "b"]}, 0, 2,
        ).values()
    )  # fmt: skip
    loss.backward()


def test_maple_cross_dataset_depth_is_a_quarter():
    from dplbench.plan.methods import resolve_method

    cfg = resolve_method("maple", tiny({"backbone": {"model": "dpl-tiny-deep"}}), protocol="xd")
    assert build_method(cfg).depth_text == 2  # 3 of ViT-B/16's 12 layers; 2 of 8
