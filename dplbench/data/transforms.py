"""Image pipelines of docs/protocols.md §3 and docs/dpl.md §5, with the image size as a parameter.

- `clip_train`: random resized crop (scale 0.08-1, bicubic), horizontal flip, CLIP mean/std.
- `clip_test` (= the clean view): resize the shorter side (bicubic), centre crop, CLIP mean/std.
- `PatchRandAugment`: RandAugment applied independently to each p x p patch of the clean view
  (2 ops per patch at level 7, ops identity/autocontrast/equalize/brightness/contrast/color/
  sharpness), as the DPL release feeds its learnable branch.

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


# The patch ops below follow DroPLe data/randaugment.py op for op on uint8 images (each op's
# output is cast back to uint8, truncating, before the next op). Two of its quirks are kept on
# purpose, because they are what the release trains with: the grey level of Contrast and Color
# weights the channels 0.114 / 0.587 / 0.299 (OpenCV's BGR weights applied to RGB arrays). One is
# not: its Sharpness casts out-of-range values to uint8 without clipping, which wraps around on x86
# (platform-dependent); we saturate (docs/deviations.md §8).
GREY_WEIGHTS = (0.114, 0.587, 0.299)


def enhance_factor(level: float, max_level: float = 10.0) -> float:
    """DroPLe `enhance_level_to_args`: (level / 10) * 1.8 + 0.1, i.e. 1.36 at level 7."""
    return (level / max_level) * 1.8 + 0.1


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    # numpy's clip(0, 255).astype(uint8): truncation towards zero; kept as float64 between ops.
    return x.clamp(0, 255).floor().double()


# Each op computes in the dtype the release's numpy code does (float32 or float64), so that the
# truncation to uint8 lands on the same integers.


def _identity(x, f):
    return x


def _brightness(x, f):
    # np.arange(256, dtype=float32) * factor
    return _to_uint8(x.float() * torch.tensor(f, dtype=torch.float32))


def _contrast(x, f):
    # mean = sum(mean over the patch per channel * weights), float64 and not rounded
    w = torch.tensor(GREY_WEIGHTS, dtype=torch.float64).view(1, 3)
    mean = (x.mean(dim=(2, 3)) * w).sum(dim=1).view(-1, 1, 1, 1)
    return _to_uint8((x - mean) * f + mean)


def _color(x, f):
    # img @ M with M = float32([[.886,-.114,-.114],[-.587,.413,-.587],[-.299,-.299,.701]]) * f
    # + float32([[.114],[.587],[.299]]): out_c = f * x_c + (1 - f) * grey, in float32
    base = torch.tensor(
        [[0.886, -0.114, -0.114], [-0.587, 0.413, -0.587], [-0.299, -0.299, 0.701]],
        dtype=torch.float32,
    )
    m = base * torch.tensor(f, dtype=torch.float32) + torch.tensor(
        GREY_WEIGHTS, dtype=torch.float32
    ).view(3, 1)
    out = torch.einsum("nkhw,kc->nchw", x.float(), m)
    return _to_uint8(out)


def _sharpness(x, f):
    # cv2.filter2D with ones(3,3), centre 5, /13 (rounded to uint8) on the interior; the 1-pixel
    # border of each patch is left unchanged; the blend runs in float32.
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64) / 13
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    smooth = torch.nn.functional.conv2d(x.reshape(n * c, 1, h, w), k.view(1, 1, 3, 3))
    degenerate = smooth.round().view(n, c, h - 2, w - 2).float()
    inner = x[:, :, 1:-1, 1:-1].float()
    out = x.clone()
    factor = torch.tensor(f, dtype=torch.float32)
    out[:, :, 1:-1, 1:-1] = _to_uint8(degenerate + factor * (inner - degenerate))
    return out


def _autocontrast(x, f):
    # per channel: table = arange(256) * scale - low * scale, scale = 255 / (high - low), float64;
    # unchanged where high <= low
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    # a true division (`255.0 / tensor` multiplies by a reciprocal, one ulp off numpy)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1.0)
    return torch.where(hi > lo, _to_uint8(x * scale + (-lo * scale)), x)


def _equalize(x, f):
    # PIL's equalize (the release's cv2 version matches it exactly)
    return F.equalize(x.to(torch.uint8)).double()


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
    """RandAugment per patch, as DroPLe's `PatchRandomAugment` (configs/patch_aug.json: patch 16,
    stride 16, N 2, M 7): every p x p patch draws its own `num_ops` ops uniformly, with
    replacement, from `ops`, and applies them in order at the fixed level `magnitude` (enhance
    factor 1.36 at 7, no random sign). uint8 [3, H, W] -> uint8 [3, H, W]; H and W must be
    multiples of `patch_size`."""

    def __init__(
        self,
        patch_size: int = 16,
        num_ops: int = 2,
        magnitude: int = 7,
        ops: tuple[str, ...] = tuple(PATCH_OPS),
        generator: torch.Generator | None = None,
    ) -> None:
        unknown = set(ops) - set(PATCH_OPS)
        if unknown:
            raise ValueError(f"unknown ops {sorted(unknown)}; choose from {list(PATCH_OPS)}")
        self.patch_size, self.num_ops, self.ops = patch_size, num_ops, tuple(ops)
        self.factor = enhance_factor(magnitude)
        self.generator = generator

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c, h, w = img.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
        gh, gw = h // p, w // p
        # [3, H, W] -> [gh*gw, 3, p, p]
        x = img.reshape(c, gh, p, gw, p).permute(1, 3, 0, 2, 4).reshape(-1, c, p, p).double()
        n, g = x.shape[0], self.generator
        for _ in range(self.num_ops):
            which = torch.randint(len(self.ops), (n,), generator=g)  # [n]
            for j, name in enumerate(self.ops):
                sel = which == j
                if sel.any():
                    x[sel] = PATCH_OPS[name](x[sel], self.factor)
        x = x.to(torch.uint8)
        # [gh*gw, 3, p, p] -> [3, H, W]
        return x.reshape(gh, gw, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, h, w)


TRAIN_VIEWS = ("clip", "patch_randaugment", "test")


@dataclass(frozen=True)
class ViewConfig:
    image_size: int = 224  # output side (224 for CLIP ViT-B/16; tests use 32)
    train_view: str = (
        "clip"  # "clip" (docs/protocols.md §3) | "patch_randaugment" (docs/dpl.md §5) | "test"
    )
    with_clean: bool = False  # also return the clean resize + centre-crop view (frozen branch)
    patch_size: int = 16  # patch_randaugment: patch side
    num_ops: int = 2  # patch_randaugment: ops per patch
    magnitude: int = 7  # patch_randaugment: level out of 10 (DroPLe configs/patch_aug.json M=7)


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
