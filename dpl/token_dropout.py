"""Importance Weighted Token Dropout (docs/dpl.md §3): who is dropped, and what dropping means.

`IWTDHook` is the layer hook the prompted encoders call in training: it scores the layer's tokens
(importance.py), maps scores to drop probabilities, draws a fresh selection per sample, layer and
step, and applies the configured drop mode to the target tokens only. It also captures the MAG
aggregates of the layers where the MAG alignment loss needs them.

A forward of K members (dpl/members.py) runs one hook over their rows: the arithmetic once over
all rows with each member's rates as per-row values, the draws from each member's own stream
before the arithmetic (which therefore compiles: no generator inside it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from dpl import importance as imp
from dpl.config import DROP_MODES, IWTDConfig
from dpl.encoders import Modality, TokenLayout
from dpl.mag import MAGBridge
from dpl.members import Streams, coefficient, per_row

log = logging.getLogger(__name__)


def select_tokens(p: torch.Tensor, target: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Each target token independently with probability p_j, given u ~ U[0,1) of p's shape ->
    [B,S] bool."""
    return (u < p) & target


def drop_factor(
    p: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    sigma: torch.Tensor | float,
    u: torch.Tensor,
    eps: torch.Tensor | None,
) -> torch.Tensor:
    """What multiplies the layer output x [B,S,D]: noise -> [B,S,D] with ε = 1 + σ·eps on the
    selected tokens (eps ~ N(0,1) [B,S,D], σ per row [B,1,1] or one); zero -> [B,S,1] with 0 on
    the selected and 1/(1−p) on the kept target tokens. Exactly 1 everywhere else, so untouched
    tokens stay bit-identical."""
    selected = select_tokens(p, target, u)
    if mode == "noise":
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
    p_min: torch.Tensor | float,
    p_max: torch.Tensor | float,
    p_span: torch.Tensor | float,
    mode: str,
    sigma: torch.Tensor | float,
    u: torch.Tensor,
    eps: torch.Tensor | None,
) -> torch.Tensor:
    """Scores -> importance -> p -> the drop factor, in one function (docs/dpl.md §3), so that on
    GPU torch.compile can fuse its few dozen small kernels per layer into a handful. Rates are
    per row ([B,1]) or one value; the draws `u`, `eps` are made before."""
    scores = {}
    if "cls" in names:
        scores["cls"] = imp.cls_score(attn, global_index, content)
    if "self" in names:
        scores["self"] = imp.self_score(attn, content)
    if "cross" in names:
        scores["cross"] = imp.cross_score(mag_attn, content)
    _, importance = imp.importance(names, scores, content)
    p = imp.drop_probability(importance, content, p_min, p_max, p_span)
    return drop_factor(p, target, mode, sigma, u, eps)


class CompiledFactor:
    """`importance_drop_factor` under torch.compile, once per process (a documented per-process
    cache, `COMPILED`). At batch 4 a DPL step is bound by kernel launches, not arithmetic; fusing
    the no-grad IWTD arithmetic removes most of its launches. Used on CUDA only (no gain on CPU,
    and it needs a compiler), not at all with $DPL_COMPILE=0 (read at first use); after a
    compiler failure, eager for good."""

    def __init__(self) -> None:
        self.fn = None
        self.failed = False

    def usable(self, device: torch.device) -> bool:
        off = os.environ.get("DPL_COMPILE", "1") == "0"
        return device.type == "cuda" and not (off or self.failed)

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


def _factor_fn(device: torch.device):
    return COMPILED if COMPILED.usable(device) else importance_drop_factor


class IWTDHook:
    """One training forward's layer hook over K members' rows. Holds the MAG aggregates it
    captured (for the loss): per layer [K·R,M,d], R the rows `capture_rows` selects per member
    (the text side: each sample's label class) or all."""

    def __init__(
        self,
        cfgs: Sequence[IWTDConfig],
        layers: dict[Modality, int],
        mag: MAGBridge | None,
        mag_layers: int = 0,
        streams: Streams | None = None,
        capture_rows: dict[Modality, torch.Tensor] | None = None,
    ) -> None:
        self.cfgs = tuple(cfgs)
        self.cfg = self.cfgs[0]  # what is one for all members: on/off, scores, mode, layers
        self.layers = layers  # IWTD acts at layers 0..layers[m]-1 of modality m
        self.mag = mag
        self.mag_layers = mag_layers  # capture MAG aggregates at layers 0..mag_layers-1
        self.streams = streams if streams is not None else Streams.global_(len(self.cfgs))
        self.capture_rows = capture_rows or {}
        self.captured: dict[Modality, list[torch.Tensor]] = {"vision": [], "text": []}

    @property
    def members(self) -> int:
        return len(self.cfgs)

    def _drops(self, modality: Modality, layer: int) -> bool:
        return self.cfg.enabled and layer < self.layers.get(modality, 0)

    def wants_attention(self, modality: Modality, layer: int) -> bool:
        return self._drops(modality, layer) and self.cfg.needs_attention

    def _rates(self, rows: int, like: torch.Tensor) -> tuple:
        """Each member's p_min, p_max, p_max − p_min (on the host) and σ, per row."""
        if self.members == 1:  # one member: its values as they are
            c = self.cfg
            return c.p_min, c.p_max, c.p_max - c.p_min, c.sigma
        values = [[c.p_min, c.p_max, c.p_max - c.p_min, c.sigma] for c in self.cfgs]
        table = coefficient([v for row in values for v in row], like).view(-1, 4)
        p_min, p_max, span, sigma = (per_row(table[:, i], rows) for i in range(4))
        return p_min, p_max, span, sigma[..., None]

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
            mag_attn = self.mag.attend(x, modality, layout.valid)  # [K·N,M,S]
            if capture:
                rows = self.capture_rows.get(modality)
                self.captured[modality].append(self.mag.aggregate(mag_attn, x, modality, rows))
        if not drops:
            return x
        cfg, k = self.cfg, self.members
        rows = x.shape[0] // k
        with torch.no_grad():  # who is dropped is a sampling decision, not a gradient path
            u = self.streams.uniform((rows, x.shape[1]), x.device).flatten(0, 1)
            eps = None
            if cfg.drop_mode == "noise":
                eps = self.streams.normal((rows, x.shape[1], x.shape[2]), x.device).flatten(0, 1)
            p_min, p_max, span, sigma = self._rates(rows, x)
            factor = _factor_fn(x.device)(
                attn,
                None if mag_attn is None else mag_attn.detach(),
                layout.global_index,
                layout.content,
                layout.target,
                cfg.importance,
                p_min,
                p_max,
                span,
                cfg.drop_mode,
                sigma,
                u,
                eps,
            )
        return x * factor.to(x.dtype)
