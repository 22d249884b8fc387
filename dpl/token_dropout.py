"""Importance Weighted Token Dropout (docs/dpl.md §3): who is dropped, and what dropping means.

`IWTDHook` is the layer hook the prompted encoders call in training: it scores the layer's tokens
(importance.py), maps scores to drop probabilities, draws a fresh selection per sample, layer and step,
and applies the configured drop mode to the target tokens only. It also captures the MAG aggregates
of the layers where the MAG alignment loss needs them.
"""

from __future__ import annotations

import logging
import os

import torch

from dpl import importance as imp
from dpl.config import DROP_MODES, IWTDConfig
from dpl.encoders import Modality, TokenLayout
from dpl.mag import MAGBridge

log = logging.getLogger(__name__)


def select_tokens(
    p: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each target token independently with probability p_j -> [B,S] bool."""
    u = torch.rand(p.shape, device=p.device, generator=generator)
    return (u < p) & target


def drop_factor(
    p: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    sigma: float,
    width: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """What multiplies the layer output x [B,S,D]: noise -> [B,S,D] with ε ~ N(1, σ²) on the
    selected tokens; zero -> [B,S,1] with 0 on the selected and 1/(1−p) on the kept target
    tokens. Exactly 1 everywhere else, so untouched tokens stay bit-identical."""
    selected = select_tokens(p, target, generator)
    if mode == "noise":
        shape = (*p.shape, width)
        eps = torch.randn(shape, device=p.device, generator=generator, dtype=torch.float32)
        return torch.where(selected[..., None], 1.0 + sigma * eps, 1.0)
    if mode == "zero":
        kept = target & ~selected
        scale = torch.where(kept, 1.0 / (1.0 - p), 1.0).masked_fill(selected, 0.0)
        return scale[..., None]
    raise ValueError(f"unknown drop mode {mode!r}; choose one of {DROP_MODES}")


def importance_drop_factor(
    attn: torch.Tensor | None,
    mag_attn: torch.Tensor | None,
    global_index: torch.Tensor,
    content: torch.Tensor,
    target: torch.Tensor,
    names: tuple[str, ...],
    p_min: float,
    p_max: float,
    mode: str,
    sigma: float,
    width: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Scores -> importance -> p -> the drop factor, in one function (docs/dpl.md §3), so that on
    GPU torch.compile can fuse its few dozen small kernels per layer into a handful."""
    scores = {}
    if "cls" in names:
        scores["cls"] = imp.cls_score(attn, global_index, content)
    if "self" in names:
        scores["self"] = imp.self_score(attn, content)
    if "cross" in names:
        scores["cross"] = imp.cross_score(mag_attn, content)
    _, importance = imp.importance(names, scores, content)
    p = imp.drop_probability(importance, content, p_min, p_max)
    return drop_factor(p, target, mode, sigma, width, generator)


class CompiledFactor:
    """`importance_drop_factor` under torch.compile, once per process (a documented per-process
    cache, `COMPILED`). At batch 4 a DPL step is bound by kernel launches, not arithmetic; fusing
    the no-grad IWTD arithmetic removes most of its launches. Used on CUDA only (no gain on CPU,
    and it needs a compiler), never with an explicit generator (compiled graphs take no Generator
    objects), not at all with $DPL_COMPILE=0 (read at first use); after a compiler failure, eager
    for good."""

    def __init__(self) -> None:
        self.fn = None
        self.failed = False

    def usable(self, device: torch.device, generator: torch.Generator | None) -> bool:
        off = os.environ.get("DPL_COMPILE", "1") == "0"
        return device.type == "cuda" and generator is None and not (off or self.failed)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        try:
            if self.fn is None:
                self.fn = torch.compile(importance_drop_factor, dynamic=False)
            return self.fn(*args, **kwargs)
        except Exception as e:  # a missing toolchain must cost speed, never the run
            log.warning("torch.compile of the IWTD arithmetic failed (%s); running eager", e)
            self.failed = True
            return importance_drop_factor(*args, **kwargs)


COMPILED = CompiledFactor()


def _factor_fn(device: torch.device, generator: torch.Generator | None):
    return COMPILED if COMPILED.usable(device, generator) else importance_drop_factor


class IWTDHook:
    """One training forward's layer hook. Holds the MAG aggregates it captured (for the loss)."""

    def __init__(
        self,
        cfg: IWTDConfig,
        layers: dict[Modality, int],
        mag: MAGBridge | None,
        mag_layers: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.cfg = cfg
        self.layers = layers  # IWTD acts at layers 0..layers[m]-1 of modality m
        self.mag = mag
        self.mag_layers = mag_layers  # capture MAG aggregates at layers 0..mag_layers-1
        self.generator = generator
        self.captured: dict[Modality, list[torch.Tensor]] = {"vision": [], "text": []}

    def _drops(self, modality: Modality, layer: int) -> bool:
        return self.cfg.enabled and layer < self.layers.get(modality, 0)

    def wants_attention(self, modality: Modality, layer: int) -> bool:
        return self._drops(modality, layer) and self.cfg.needs_attention

    def __call__(
        self,
        x: torch.Tensor,
        attn: torch.Tensor | None,
        modality: Modality,
        layer: int,
        layout: TokenLayout,
    ) -> torch.Tensor:
        drops = self._drops(modality, layer)
        capture = self.mag is not None and layer < self.mag_layers
        mag_attn = None
        if capture or (drops and self.cfg.needs_cross):
            mag_attn, z = self.mag.attend(x, modality, layout.valid)  # [B,M,S], [B,S,d]
            if capture:
                self.captured[modality].append(mag_attn @ z)  # [B,M,d]
        if not drops:
            return x
        cfg = self.cfg
        with torch.no_grad():  # who is dropped is a sampling decision, not a gradient path
            factor = _factor_fn(x.device, self.generator)(
                attn,
                None if mag_attn is None else mag_attn.detach(),
                layout.global_index,
                layout.content,
                layout.target,
                cfg.importance,
                cfg.p_min,
                cfg.p_max,
                cfg.drop_mode,
                cfg.sigma,
                x.shape[-1],
                self.generator,
            )
        return x * factor.to(x.dtype)
