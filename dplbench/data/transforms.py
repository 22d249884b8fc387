"""Image pipelines of PROTOCOLS.md §3 and METHOD.md §5, with the image size as a parameter.

- `clip_train`: random resized crop (scale 0.08-1, bicubic), horizontal flip, CLIP mean/std.
- `clip_test` (= the clean view): resize the shorter side (bicubic), centre crop, CLIP mean/std.
- `PatchRandAugment`: RandAugment applied independently to each p x p patch of the clean view
  (2 ops per patch, magnitude 7 of 31 bins, ops identity/autocontrast/equalize/brightness/
  contrast/color/sharpness), as the DPL release feeds its learnable branch.

Randomness: torchvision's random transforms draw from torch's global RNG, which the DataLoader
seeds per worker; `PatchRandAugment` takes an optional `torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = v2.InterpolationMode.BICUBIC


def _to_float_normalized() -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]


def clip_train(size: int = 224, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    """PIL image -> [3, size, size] float, CLIP-normalised, randomly cropped and flipped."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            *_to_float_normalized(),
        ]
    )


def clean_uint8(size: int = 224) -> v2.Compose:
    """PIL image -> [3, size, size] uint8: shorter side resized to `size`, centre crop."""
    return v2.Compose(
        [v2.ToImage(), v2.Resize(size, interpolation=BICUBIC, antialias=True), v2.CenterCrop(size)]
    )


def normalize() -> v2.Compose:
    """uint8 [3, H, W] -> float, CLIP mean/std."""
    return v2.Compose(_to_float_normalized())


def clip_test(size: int = 224) -> v2.Compose:
    """PIL image -> [3, size, size] float: the test transform, also the clean view."""
    return v2.Compose([clean_uint8(size), normalize()])


def _blend(img: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # factor [n] -> [n, 1, 1, 1]; PIL/torchvision: factor * img + (1 - factor) * degenerate
    f = factor.view(-1, 1, 1, 1)
    return (f * img + (1 - f) * degenerate).clamp(0, 255)


def _gray(x: torch.Tensor) -> torch.Tensor:
    # x [n, 3, p, p] -> [n, 1, p, p], ITU-R 601-2 luma as PIL's convert("L")
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).floor()


def _identity(x, f):
    return x


def _brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x, f):
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _color(x, f):
    return _blend(x, _gray(x), f)


def _sharpness(x, f):
    # PIL's SMOOTH kernel on the interior, border pixels unchanged (as torchvision).
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=x.dtype) / 13
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    smooth = torch.nn.functional.conv2d(x.reshape(n * c, 1, h, w), k.view(1, 1, 3, 3))
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth.round().view(n, c, h - 2, w - 2)
    return _blend(x, degenerate, f)


def _autocontrast(x, f):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, 255)


def _equalize(x, f):
    return F.equalize(x.round().to(torch.uint8)).float()


PATCH_OPS = {
    "identity": _identity,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "brightness": _brightness,
    "contrast": _contrast,
    "color": _color,
    "sharpness": _sharpness,
}


class PatchRandAugment:
    """RandAugment per patch (METHOD.md §5): each p x p patch gets `num_ops` ops drawn
    uniformly from `ops`; enhance ops use factor 1 +/- 0.9 * magnitude / (num_bins - 1) with a
    random sign (torchvision RandAugment's magnitude scale). uint8 [3, H, W] -> uint8 [3, H, W];
    H and W must be multiples of `patch_size`."""

    def __init__(
        self,
        patch_size: int = 16,
        num_ops: int = 2,
        magnitude: int = 7,
        num_bins: int = 31,
        ops: tuple[str, ...] = tuple(PATCH_OPS),
        generator: torch.Generator | None = None,
    ) -> None:
        unknown = set(ops) - set(PATCH_OPS)
        if unknown:
            raise ValueError(f"unknown ops {sorted(unknown)}; choose from {list(PATCH_OPS)}")
        self.patch_size, self.num_ops, self.ops = patch_size, num_ops, tuple(ops)
        self.strength = 0.9 * magnitude / (num_bins - 1)
        self.generator = generator

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c, h, w = img.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
        gh, gw = h // p, w // p
        # [3, H, W] -> [gh*gw, 3, p, p]
        x = img.reshape(c, gh, p, gw, p).permute(1, 3, 0, 2, 4).reshape(-1, c, p, p).float()
        n, g = x.shape[0], self.generator
        for _ in range(self.num_ops):
            which = torch.randint(len(self.ops), (n,), generator=g)  # [n]
            sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)  # [n]
            factor = 1.0 + sign * self.strength  # [n]
            for j, name in enumerate(self.ops):
                sel = which == j
                if sel.any():
                    x[sel] = PATCH_OPS[name](x[sel], factor[sel])
        x = x.round().clamp(0, 255).to(torch.uint8)
        # [gh*gw, 3, p, p] -> [3, H, W]
        return x.reshape(gh, gw, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, h, w)


TRAIN_VIEWS = ("clip", "patch_randaugment", "test")


@dataclass(frozen=True)
class ViewConfig:
    image_size: int = 224  # output side (224 for CLIP ViT-B/16; tests use 32)
    train_view: str = "clip"  # "clip" (PROTOCOLS §3) | "patch_randaugment" (METHOD §5) | "test"
    with_clean: bool = False  # also return the clean resize + centre-crop view (frozen branch)
    patch_size: int = 16  # patch_randaugment: patch side
    num_ops: int = 2  # patch_randaugment: ops per patch
    magnitude: int = 7  # patch_randaugment: magnitude out of 31 bins


class SampleTransform:
    """PIL image -> {"image": [3, S, S] float, "clean": [3, S, S] float (if asked)}."""

    def __init__(self, cfg: ViewConfig) -> None:
        if cfg.train_view not in TRAIN_VIEWS:
            raise ValueError(f"train_view must be one of {TRAIN_VIEWS}, got {cfg.train_view!r}")
        self.cfg = cfg
        self.clean = clean_uint8(cfg.image_size)
        self.norm = normalize()
        self.train = clip_train(cfg.image_size)
        self.patch_ra = PatchRandAugment(cfg.patch_size, cfg.num_ops, cfg.magnitude)

    def __call__(self, img: Image.Image) -> dict[str, torch.Tensor]:
        view = self.cfg.train_view
        needs_clean = self.cfg.with_clean or view != "clip"
        clean = self.clean(img) if needs_clean else None
        if view == "clip":
            out = {"image": self.train(img)}
        elif view == "patch_randaugment":
            out = {"image": self.norm(self.patch_ra(clean))}
        else:
            out = {"image": self.norm(clean)}
        if self.cfg.with_clean:
            out["clean"] = self.norm(clean)
        return out
