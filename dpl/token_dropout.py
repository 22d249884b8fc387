"""Importance Weighted Token Dropout (METHOD.md §3): who is dropped, and what dropping means.

`IWTDHook` is the layer hook the prompted encoders call in training: it scores the layer's tokens
(importance.py), maps scores to drop probabilities, draws a fresh selection per sample, layer and step,
and applies the configured drop mode to the target tokens only. It also captures the MAG aggregates
of the layers where the MAG alignment loss needs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpl import importance as imp
from dpl.encoders import Modality, TokenLayout
from dpl.mag import MAGBridge

DROP_MODES = ("noise", "zero")


@dataclass(frozen=True)
class IWTDConfig:
    """METHOD.md §3. Defaults: the paper's and the authors' release (noise mode)."""

    enabled: bool = False
    importance: tuple[str, ...] = ("cls", "self", "cross")  # non-empty subset, or ("uniform",)
    p_min: float = 0.1
    p_max: float = 0.5
    drop_mode: str = "noise"  # "noise": h ⊙ ε, ε~N(1,σ²) (release) | "zero": inverted dropout
    sigma: float = 0.03
    text: bool = True  # act in the text encoder
    vision: bool = True  # act in the vision encoder
    text_layers: int | None = None  # layers 0..n-1; None: the text prompt depth
    vision_layers: int | None = None  # None: the vision prompt depth

    def __post_init__(self) -> None:
        names = set(self.importance)
        if not names or not (names <= set(imp.IMPORTANCE_SCORES) or names == {"uniform"}):
            raise ValueError(
                f"iwtd.importance={list(self.importance)}: use a non-empty subset of "
                f"{list(imp.IMPORTANCE_SCORES)} or ['uniform']"
            )
        if self.drop_mode not in DROP_MODES:
            raise ValueError(f"iwtd.drop_mode={self.drop_mode!r}: choose one of {DROP_MODES}")
        if not 0.0 <= self.p_min <= self.p_max < 1.0:
            raise ValueError(f"iwtd: need 0 <= p_min <= p_max < 1, got {self.p_min}, {self.p_max}")

    @property
    def needs_attention(self) -> bool:
        return bool({"cls", "self"} & set(self.importance))

    @property
    def needs_cross(self) -> bool:
        return "cross" in self.importance


def select_tokens(
    p: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each target token independently with probability p_j -> [B,S] bool."""
    u = torch.rand(p.shape, device=p.device, generator=generator)
    return (u < p) & target


def drop_tokens(
    x: torch.Tensor,
    p: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    sigma: float = 0.03,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply the drop mode to the selected target tokens of x [B,S,D]; p [B,S]; target [B,S]."""
    selected = select_tokens(p, target, generator)
    if mode == "noise":
        eps = torch.randn(x.shape, device=x.device, generator=generator, dtype=torch.float32)
        eps = (1.0 + sigma * eps).to(x.dtype)
        return torch.where(selected[..., None], x * eps, x)
    if mode == "zero":
        kept = target & ~selected
        scale = torch.where(kept, 1.0 / (1.0 - p), 1.0).masked_fill(selected, 0.0)
        return x * scale[..., None].to(x.dtype)
    raise ValueError(f"unknown drop mode {mode!r}; choose one of {DROP_MODES}")


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
        with torch.no_grad():  # drop probabilities are a sampling decision, not a gradient path
            p = self.probabilities(attn, mag_attn, layout)
        return drop_tokens(x, p, layout.target, self.cfg.drop_mode, self.cfg.sigma, self.generator)

    def probabilities(
        self, attn: torch.Tensor | None, mag_attn: torch.Tensor | None, layout: TokenLayout
    ) -> torch.Tensor:
        names = self.cfg.importance
        if names == ("uniform",):
            importance = imp.uniform_score(layout.content)
        else:
            scores = {
                "cls": lambda: imp.cls_score(attn, layout.global_index, layout.content),
                "self": lambda: imp.self_score(attn, layout.content),
                "cross": lambda: imp.cross_score(mag_attn.detach(), layout.content),
            }
            importance = imp.combine([scores[n]() for n in names])
        return imp.drop_probability(importance, layout.content, self.cfg.p_min, self.cfg.p_max)
