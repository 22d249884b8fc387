"""Image pipelines: shapes, CLIP normalisation, the clean view, patch-wise RandAugment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dplbench.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    PATCH_OPS,
    PatchRandAugment,
    SampleTransform,
    ViewConfig,
    clean_uint8,
    clip_test,
    clip_train,
    enhance_factor,
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
    # brightness or identity: every 16x16 patch draws its own two ops at the fixed level 7
    # (factor 1.36, no sign), so a patch of 100s ends at 100, 136 or 184 (= floor(136 * 1.36))
    x = torch.full((3, 64, 64), 100, dtype=torch.uint8)
    ops = ("brightness", "identity")
    out = PatchRandAugment(16, ops=ops, generator=torch.Generator().manual_seed(1))(x)
    patch_values = out.reshape(3, 4, 16, 4, 16).permute(1, 3, 0, 2, 4).reshape(16, -1)
    assert all(len(p.unique()) == 1 for p in patch_values)  # uniform within a patch
    assert {int(p[0]) for p in patch_values} == {100, 136, 184}


def _release_op(name: str, img: np.ndarray, f: float) -> np.ndarray:
    """DroPLe data/randaugment.py's op on an HWC uint8 RGB patch, written from its formulas."""
    if name == "brightness":
        table = (np.arange(256, dtype=np.float32) * np.float32(f)).clip(0, 255).astype(np.uint8)
        return table[img]
    if name == "contrast":
        mean = np.sum(np.mean(img, axis=(0, 1)) * np.array([0.114, 0.587, 0.299]))
        table = ((np.arange(256) - mean) * f + mean).clip(0, 255).astype(np.uint8)
        return table[img]
    if name == "color":
        m = np.float32([[0.886, -0.114, -0.114], [-0.587, 0.413, -0.587], [-0.299, -0.299, 0.701]])
        m = m * np.float32(f) + np.float32([[0.114], [0.587], [0.299]])
        return np.matmul(img, m).clip(0, 255).astype(np.uint8)
    if name == "autocontrast":
        out = img.copy()
        for c in range(3):
            ch = img[:, :, c]
            high, low = int(ch.max()), int(ch.min())
            if high > low:
                scale = 255 / (high - low)
                table = (np.arange(256) * scale - low * scale).clip(0, 255).astype(np.uint8)
                out[:, :, c] = table[ch]
        return out
    if name == "sharpness":
        k = np.ones((3, 3)) / 13
        k[1, 1] = 5 / 13
        out = img.copy()
        h, w, _ = img.shape
        for y in range(1, h - 1):
            for x in range(1, w - 1):
                for c in range(3):
                    d = np.rint(np.sum(img[y - 1 : y + 2, x - 1 : x + 2, c] * k))  # cv2 rounds
                    v = np.float32(d) + np.float32(f) * (np.float32(img[y, x, c]) - np.float32(d))
                    out[y, x, c] = np.uint8(np.clip(v, 0, 255))  # saturated (see transforms.py)
        return out
    if name == "equalize":  # the release's cv2 histogram version equals PIL's
        return np.asarray(ImageOps.equalize(Image.fromarray(img)))
    raise ValueError(name)


@pytest.mark.parametrize(
    "name", ["brightness", "contrast", "color", "sharpness", "autocontrast", "equalize"]
)
def test_patch_ops_at_level_7_equal_the_release(name):
    assert enhance_factor(7) == pytest.approx(1.36)  # (7 / 10) * 1.8 + 0.1
    rng = np.random.default_rng(0)
    for _ in range(5):
        patch = rng.integers(20, 236, size=(16, 16, 3), dtype=np.uint8)
        x = torch.from_numpy(patch).permute(2, 0, 1)[None].double()  # [1, 3, 16, 16]
        ours = PATCH_OPS[name](x, enhance_factor(7))[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(ours.astype(np.uint8), _release_op(name, patch, 1.36))


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
