"""What IWTD sees and what a model looks at, for inspection (`dplbench explain`).

`importance_maps` runs one forward of a model's learnable branch with `ImportanceProbe`, a layer hook
that records, at chosen layers, each importance score (importance.py), their combination, the drop
probabilities and one sampled drop mask, exactly as `IWTDHook` computes them in training, but never
changes a token: every recorded layer sees the undropped forward, so the maps explain the trained
prompts rather than one random dropout draw. `gradcam` is Grad-CAM (Selvaraju et al., ICCV 2017) for
a ViT: the paper's Fig. 5a.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from dpl import importance as imp
from dpl.encoders import Modality, TokenLayout
from dpl.mag import MAGBridge
from dpl.token_dropout import select_tokens


@dataclass
class LayerMaps:
    """One layer of one modality. All maps [B,S] over the layer's token sequence."""

    modality: Modality
    layer: int
    scores: dict[str, torch.Tensor]  # "cls", "self", and "cross" where the model has a MAG bridge
    importance: torch.Tensor  # the mean of the scores the method combines (`used`)
    used: tuple[str, ...]
    p: torch.Tensor  # drop probability, 0 off content tokens
    mask: torch.Tensor  # bool: one draw of the dropped tokens (target tokens only)
    layout: TokenLayout


class ImportanceProbe:
    """A `LayerHook` that records `LayerMaps` at the given layers and returns x unchanged."""

    def __init__(
        self,
        layers: dict[Modality, Iterable[int]],
        importance: tuple[str, ...],
        p_min: float,
        p_max: float,
        mag: MAGBridge | None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.layers = {m: set(v) for m, v in layers.items()}
        self.importance = importance
        self.p_min, self.p_max = p_min, p_max
        self.mag = mag
        self.generator = generator
        self.maps: list[LayerMaps] = []

    def wants_attention(self, modality: Modality, layer: int) -> bool:
        return layer in self.layers.get(modality, ())

    def __call__(
        self,
        x: torch.Tensor,
        attn: torch.Tensor | None,
        modality: Modality,
        layer: int,
        layout: TokenLayout,
    ) -> torch.Tensor:
        if layer not in self.layers.get(modality, ()):
            return x
        content = layout.content
        scores = {
            "cls": imp.cls_score(attn, layout.global_index, content),
            "self": imp.self_score(attn, content),
        }
        if self.mag is not None:
            mag_attn = self.mag.attend(x, modality, layout.valid)
            scores["cross"] = imp.cross_score(mag_attn.float(), content)
        # A score the model cannot compute (S_cross without a bridge) is left out, and said so
        # in `used`.
        used, importance = imp.importance(self.importance, scores, content)
        p = imp.drop_probability(importance, content, self.p_min, self.p_max)
        u = torch.rand(p.shape, device=p.device, generator=self.generator)
        mask = select_tokens(p, layout.target, u)
        self.maps.append(LayerMaps(modality, layer, scores, importance, used, p, mask, layout))
        return x


@torch.no_grad()
def importance_maps(
    model,
    images: torch.Tensor,
    vision_layers: Iterable[int],
    text_layers: Iterable[int],
    generator: torch.Generator | None = None,
) -> list[LayerMaps]:
    """The learnable branch's maps for `images` [B,3,H,W] and the current class list's prompts.
    Importance names and p_min/p_max are the method's IWTD settings (the defaults where IWTD is
    off, e.g. an untrained or zero-shot model)."""
    cfg = model.cfg.iwtd
    probe = ImportanceProbe(
        {"vision": vision_layers, "text": text_layers},
        cfg.importance,
        cfg.p_min,
        cfg.p_max,
        model.mag,
        generator,
    )
    was = model.training
    model.eval()
    try:
        model.image_features(images, probe)
        model.prompted_text_features(probe)
    finally:
        model.train(was)
    return probe.maps


def patch_grid(model) -> tuple[int, int]:
    """(rows, cols) of the vision tower's patch grid; patch tokens are positions 1..rows*cols."""
    gh, gw = model.clip.visual.grid_size
    return int(gh), int(gw)


def gradcam(model, images: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of the predicted class over the patch grid -> (maps [B,gh,gw] in [0,1], predicted
    class [B]).

    Activations A are the normalised input of vision block `layer` (its ln_1 output: the last
    block by default, where patch tokens still carry gradient; past it only [CLS] is pooled).
    cam_j = ReLU(Σ_d w_d A_jd), w_d = mean over patches j of ∂y_c/∂A_jd, y_c the logit of the
    predicted class; each map is divided by its maximum."""
    blk = model.clip.visual.transformer.resblocks[layer]
    kept: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, out):
        out.retain_grad()
        kept["a"] = out

    handle = blk.ln_1.register_forward_hook(keep)
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # Gradient from the input image: frozen and zero-shot models have no trainable
            # parameter that would build the graph otherwise.
            x = images.detach().clone().requires_grad_(True)
            logits = model.logits(x)
            pred = logits.argmax(-1)
            logits.gather(1, pred[:, None]).sum().backward()
    finally:
        handle.remove()
        model.train(was)
        model.zero_grad(set_to_none=True)
    gh, gw = patch_grid(model)
    a = kept["a"].detach()[:, 1 : 1 + gh * gw].float()  # [B,N,D]; prompts come after patches
    g = kept["a"].grad[:, 1 : 1 + gh * gw].float()
    cam = torch.relu((a * g.mean(1, keepdim=True)).sum(-1))  # [B,N]
    cam = cam / cam.amax(-1, keepdim=True).clamp_min(1e-12)
    return cam.view(-1, gh, gw), pred.detach()
