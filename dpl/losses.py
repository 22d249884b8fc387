"""A training step's named, weighted loss terms from its features (docs/dpl.md §5, §6); the
total is their sum. One function for a run trained alone and for each run of a fused step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dpl.mag import alignment_loss
from dpl.residual_entropy import rer_lambda, residual_entropies


def loss_terms(
    model: Any,
    batch: dict,
    t_d: torch.Tensor,
    f_d: torch.Tensor,
    f_o: torch.Tensor | None,
    hook: Any,
    epoch: int,
    epochs: int,
) -> dict[str, torch.Tensor]:
    """model: the PromptedCLIP the features came from (its config, logit scale, frozen text);
    t_d [C,E] and f_d [B,E] its learnable-branch features (not normalised); f_o [B,E] the frozen
    branch's image features (normalised; None when no term needs them); hook: the step's IWTD /
    MAG hook (its captured MAG aggregates)."""
    cfg, w = model.cfg, model.cfg.loss
    labels = batch["label"]
    t_dn, f_dn = F.normalize(t_d.float(), dim=-1), F.normalize(f_d.float(), dim=-1)
    scale = model.logit_scale
    logits = scale * f_dn @ t_dn.T
    terms = {"ce": w.ce * F.cross_entropy(logits, labels)}

    t_o = model.classes.frozen_text
    if w.text_l1:
        terms["text_l1"] = w.text_l1 * F.l1_loss(t_dn, t_o)
    if w.kg_cos:
        terms["kg_cos"] = w.kg_cos * (1 - F.cosine_similarity(t_dn, t_o, dim=-1).mean())
    if f_o is not None:
        if w.image_l1:
            terms["image_l1"] = w.image_l1 * F.l1_loss(f_dn, f_o)
        if w.kl:
            frozen_logits = scale * f_o @ t_o.T
            kl = F.kl_div(
                F.log_softmax(logits, -1),
                F.log_softmax(frozen_logits, -1),
                reduction="sum",
                log_target=True,
            )
            terms["kl"] = w.kl * kl / logits.numel()
        if cfg.rer.enabled:
            lam = rer_lambda(epoch, epochs, cfg.rer.lambda0, cfg.rer.fixed_lambda)
            h_t, h_v = residual_entropies(f_d, f_o, t_d, t_o, lam, scale)
            terms["rer"] = -cfg.rer.weight * (h_t + h_v)
    if cfg.mag.enabled:
        terms["mag"] = cfg.mag.weight * alignment_loss(
            hook.captured["vision"], hook.captured["text"], labels
        )
    return terms
