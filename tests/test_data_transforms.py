"""Image pipelines: shapes, CLIP normalisation, the clean view, patch-wise RandAugment."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dplbench.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    PatchRandAugment,
    SampleTransform,
    ViewConfig,
    clean_uint8,
    clip_test,
    clip_train,
)


def _img(w=48, h=40, color=(200, 30, 60)):
    return Image.new("RGB", (w, h), color)


def test_test_transform_resizes_shorter_side_and_normalises():
    x = clip_test(32)(_img())
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = [
        (c / 255 - m) / s for c, m, s in zip((200, 30, 60), CLIP_MEAN, CLIP_STD, strict=True)
    ]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-2)
    assert torch.equal(clip_test(32)(_img()), x)  # deterministic


def test_train_transform_is_random_but_seedable():
    img = Image.effect_noise((64, 48), 60).convert("RGB")
    torch.manual_seed(0)
    a = clip_train(32)(img)
    torch.manual_seed(0)
    assert torch.equal(clip_train(32)(img), a)
    assert a.shape == (3, 32, 32) and not torch.equal(clip_train(32)(img), a)


def test_patch_randaugment_identity_only_is_a_noop_and_seeded():
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert torch.equal(PatchRandAugment(16, ops=("identity",))(x), x)
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    a, b = PatchRandAugment(16, generator=g())(x), PatchRandAugment(16, generator=g())(x)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8


def test_patch_randaugment_acts_per_patch():
    # brightness only: every 16x16 patch is scaled by 1 +/- 0.21 (magnitude 7 of 31 bins),
    # twice; sign drawn per patch, so patches differ in what they got
    x = torch.full((3, 64, 64), 100, dtype=torch.uint8)
    out = PatchRandAugment(16, ops=("brightness",), generator=torch.Generator().manual_seed(1))(x)
    patch_values = out.reshape(3, 4, 16, 4, 16).permute(1, 3, 0, 2, 4).reshape(16, -1)
    assert all(len(p.unique()) == 1 for p in patch_values)  # uniform within a patch
    allowed = {round(100 * a * b) for a in (0.79, 1.21) for b in (0.79, 1.21)}
    assert {int(p[0]) for p in patch_values} <= allowed and len(
        {int(p[0]) for p in patch_values}
    ) > 1


def test_patch_size_must_divide_image():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        PatchRandAugment(16)(torch.zeros(3, 40, 40, dtype=torch.uint8))


def test_sample_transform_views():
    img = _img()
    out = SampleTransform(ViewConfig(32, "patch_randaugment", with_clean=True))(img)
    assert set(out) == {"image", "clean"} and out["image"].shape == (3, 32, 32)
    assert torch.equal(out["clean"], clip_test(32)(img))
    assert clean_uint8(32)(img).dtype == torch.uint8
    assert set(SampleTransform(ViewConfig(32))(img)) == {"image"}
    with pytest.raises(ValueError):
        SampleTransform(ViewConfig(32, "mixup"))
