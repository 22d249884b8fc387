"""`dplbench explain`'s outputs: the per-image grid of maps and the text-side token table.
matplotlib's Figure API on an Agg canvas (results/plots.py), no pyplot state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dpl.explain import LayerMaps
from dplbench.data.transforms import CLIP_MEAN, CLIP_STD

SCORE_KEYS = ("s_cls", "s_self", "s_cross")  # the order of the grid's columns
COLUMNS = ("S_cls", "S_self", "S_cross", "importance I", "drop probability p", "dropped (white)")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """CLIP-normalised [B,3,H,W] -> [B,H,W,3] uint8: what the model saw (test crop)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (images.detach().cpu().float() * std + mean).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def vision_arrays(maps: Sequence[LayerMaps], grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """Patch-grid maps per layer: each key [B, layers, gh, gw] (S_cross NaN without a MAG bridge).
    Prompt tokens and [CLS] are scored and normalised with the patches but not drawn."""
    gh, gw = grid

    def on_grid(t: torch.Tensor) -> np.ndarray:
        return t[:, 1 : 1 + gh * gw].float().reshape(-1, gh, gw).cpu().numpy()

    out: dict[str, list[np.ndarray]] = {k: [] for k in (*SCORE_KEYS, "importance", "p", "mask")}
    for m in maps:
        for key in SCORE_KEYS:
            s = m.scores.get(key[2:])
            out[key].append(on_grid(s) if s is not None else np.full((len(m.p), gh, gw), np.nan))
        out["importance"].append(on_grid(m.importance))
        out["p"].append(on_grid(m.p))
        out["mask"].append(on_grid(m.mask.float()).astype(bool))
    return {k: np.stack(v, 1) for k, v in out.items()}


def _figure(rows: int, cols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.2 * cols, 2.3 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def image_grid(arrays: dict[str, np.ndarray], i: int, method: str, used: Sequence[str]):
    """Row 0: the image, Grad-CAM of the method's and of zero-shot CLIP's prediction. One row
    per layer: S_cls, S_self, S_cross, their combination, p, one sampled mask."""
    layers = arrays["layers"].tolist()
    fig, axes = _figure(1 + len(layers), len(COLUMNS))
    for ax in axes.flat:
        ax.set_axis_off()
    image = arrays["images"][i]
    names = arrays["classnames"]
    label = names[arrays["labels"][i]]
    axes[0, 0].imshow(image)
    axes[0, 0].set_title(f"label: {label}", fontsize=8)
    for col, (key, who) in enumerate(
        (("gradcam_method", method), ("gradcam_zsclip", "zero-shot CLIP")), start=1
    ):
        pred = names[arrays["pred_" + key.split("_")[1]][i]]
        h, w = image.shape[:2]
        axes[0, col].imshow(image)
        axes[0, col].imshow(
            arrays[key][i],
            cmap="jet",
            alpha=0.45,
            extent=(-0.5, w - 0.5, h - 0.5, -0.5),
            interpolation="bilinear",
        )
        axes[0, col].set_title(f"Grad-CAM {who}\npred: {pred}", fontsize=8)
    combined = ", ".join(used)
    for r, layer in enumerate(layers, start=1):
        panels = [
            *(arrays[k][i, r - 1] for k in SCORE_KEYS),
            arrays["importance"][i, r - 1],
            arrays["p"][i, r - 1],
            arrays["mask"][i, r - 1],
        ]
        for c, (title, panel) in enumerate(zip(COLUMNS, panels)):
            ax = axes[r, c]
            if np.isnan(panel).all():
                ax.text(0.5, 0.5, "no MAG bridge", ha="center", va="center", fontsize=8)
                ax.set_title(f"L{layer} {title}", fontsize=8)
                continue
            ax.imshow(panel, cmap="gray" if c == len(COLUMNS) - 1 else "viridis")
            extra = f"\nmean({combined})" if c == 3 and combined else ""
            ax.set_title(f"L{layer} {title}{extra}", fontsize=8)
    return fig


def _token_labels(model, classname: str) -> list[str]:
    """Each position up to [EOT] of a class's prompt; learnable context shows as [ctx k]. With
    an LLM prompt source: the name (then [pad] to the class list's longest), [llm k], [EOT]."""
    llm = getattr(model, "llm", None)
    ids = model.tokenizer([f"{model.prompt_prefix} {classname}{'' if llm else '.'}"])[0]
    eot = int(ids.argmax())
    labels = []
    for pos in range(eot + 1):
        try:
            labels.append(model.tokenizer.decode([int(ids[pos])]).strip().replace("|", "\\|"))
        except Exception:  # a tokenizer without decode: the id says which token it was
            labels.append(str(int(ids[pos])))
    if model.text_prompts is not None:
        for k in range(model.cfg.prompts.n_ctx_text):
            labels[1 + k] = f"[ctx {k + 1}]"
    if llm is not None:
        l0 = model.classes.embedded.shape[1]
        names = labels[:eot] + ["[pad]"] * (l0 - 1 - eot)
        return names + [f"[llm {k + 1}]" for k in range(llm.n_tokens)] + ["[EOT]"]
    return labels


def _num(t: torch.Tensor | None) -> str:
    return "" if t is None else f"{float(t):.3f}"


def text_table(
    model, maps: Sequence[LayerMaps], classes: Sequence[int], classnames: Sequence[str], name: str
) -> str:
    """Markdown: per class (those predicted for the images) and layer, each prompt token's scores,
    importance, p, whether IWTD may drop it and whether the draw dropped it."""
    lines = [f"# Text-side token importance: {name}", ""]
    if not maps:
        return "\n".join([*lines, "No text layer was chosen.", ""])
    lines += [
        "Scores are normalised over each prompt's content tokens (all tokens before [EOT]); "
        "only droppable tokens ([SOT] and the learnable context) can be dropped.",
        "",
    ]
    for c in classes:
        labels = _token_labels(model, classnames[c])
        lines += [
            f"## {classnames[c]}",
            "",
            "| layer | pos | token | droppable | S_cls | S_self | S_cross | I | p | dropped |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in maps:
            for pos, token in enumerate(labels):
                s = {k: v[c, pos] for k, v in m.scores.items()}
                lines.append(
                    f"| {m.layer} | {pos} | {token} | {'yes' if m.layout.target[c, pos] else ''} "
                    f"| {_num(s.get('cls'))} | {_num(s.get('self'))} | {_num(s.get('cross'))} "
                    f"| {_num(m.importance[c, pos])} | {_num(m.p[c, pos])} "
                    f"| {'x' if m.mask[c, pos] else ''} |"
                )
        lines.append("")
    return "\n".join(lines)
