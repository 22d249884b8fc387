"""The report's heatmaps (#29): methods × datasets, one panel per score (HM, or accuracy; then
Δ vs published where published numbers exist), each cell labelled with its value and, where
the report computed one, its 95% interval (results/comparison.py). Sized by cell so that 12
methods × 15 datasets stay legible on one page; matplotlib's Figure API on an Agg canvas, as
results/plots.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dplbench.plan.suites import protocol_spec
from dplbench.results import aggregate as agg
from dplbench.results.aggregate import AVERAGE, Row

CELL_W, CELL_H = 0.62, 0.34  # inches per cell: 16 columns x 12 rows x 2 panels fit a page
FONT = 6.5  # points: a two-line label fits a cell


@dataclass(frozen=True)
class Panel:
    """One heatmap: `values` [methods, columns] (NaN: missing), each cell's label, a colour
    scale (`diverging`: centred on 0, for differences) and a colour-bar label."""

    title: str
    values: np.ndarray
    labels: list[list[str]]
    diverging: bool
    unit: str


def heatmaps(methods: Sequence[str], columns: Sequence[str], panels: Sequence[Panel]):
    """Panels stacked vertically over the same methods (rows) and columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 2.0 + CELL_W * len(columns) + 0.9
    heights = [1.1 + CELL_H * len(methods) for _ in panels]
    fig = Figure(figsize=(width, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, panel in zip(axes, panels):
        _panel(fig, ax, methods, columns, panel)
    return fig


def _panel(fig, ax, methods: Sequence[str], columns: Sequence[str], panel: Panel) -> None:
    from matplotlib import colormaps

    values = np.ma.masked_invalid(panel.values)
    if panel.diverging:
        bound = float(np.nanmax(np.abs(panel.values))) if values.count() else 1.0
        name, lo, hi = "RdBu", -max(bound, 1e-9), max(bound, 1e-9)
    else:
        name = "viridis"
        lo = float(np.nanmin(panel.values)) if values.count() else 0.0
        hi = float(np.nanmax(panel.values)) if values.count() else 1.0
    cmap = colormaps[name].with_extremes(bad="#eeeeee")  # missing cells: light grey
    image = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    for i in range(len(methods)):
        for j in range(len(columns)):
            v = panel.values[i, j]
            # Dark cells get white text: the colour map's own luminance, not a fixed threshold.
            r, g, b, _ = image.cmap(image.norm(v)) if not np.isnan(v) else (1, 1, 1, 1)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, panel.labels[i][j], ha="center", va="center", fontsize=FONT,
                    color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(len(columns)), [agg.display_name(c) for c in columns], rotation=40,
                  ha="right", fontsize=FONT + 1)  # fmt: skip
    ax.set_yticks(range(len(methods)), list(methods), fontsize=FONT + 1)
    if AVERAGE in columns:  # the Average apart from the datasets it averages
        ax.axvline(columns.index(AVERAGE) - 0.5, color="white", lw=2)
    ax.set_title(panel.title, fontsize=FONT + 3)
    fig.colorbar(image, ax=ax, shrink=0.9, pad=0.01).set_label(panel.unit, fontsize=FONT + 1)


def _label(value: float | None, ci: tuple[float, float] | None = None, sign: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.2f}" if sign else f"{value:.2f}"
    return text if ci is None else f"{text}\n[{ci[0]:.1f}, {ci[1]:.1f}]"


def _grid(methods, columns, cell: Callable[[str, str], tuple[float | None, str]]):
    values = np.full((len(methods), len(columns)), np.nan)
    labels = [["–"] * len(columns) for _ in methods]
    for i, m in enumerate(methods):
        for j, c in enumerate(columns):
            v, labels[i][j] = cell(m, c)
            values[i, j] = np.nan if v is None else v
    return values, labels


def _delta(ours: float | None, published: float | None) -> float | None:
    return None if ours is None or published is None else ours - published


def b2n_heatmap(table: Sequence[Row], title: str = "Base-to-novel"):
    """HM per method and dataset (and the Average) with its interval; Δ HM vs published below
    when published numbers exist."""
    datasets = agg.datasets_in_order(r["dataset"] for r in table if r["dataset"] != AVERAGE)
    columns = [*datasets, AVERAGE]
    methods = agg.methods_in_order(r["method"] for r in table)
    by_key = {(r["method"], r["dataset"]): r for r in table}

    def hm(m: str, c: str) -> tuple[float | None, str]:
        r = by_key.get((m, c), {})
        return r.get("hm"), _label(r.get("hm"), r.get("ci_hm"))

    def delta(m: str, c: str) -> tuple[float | None, str]:
        r = by_key.get((m, c), {})
        d = _delta(r.get("hm"), r.get("pub_hm"))
        return d, _label(d, sign=True)

    panels = [Panel(f"{title}: HM [95% CI]", *_grid(methods, columns, hm), False, "HM (%)")]
    if any(r.get("pub_hm") is not None for r in table):
        values, labels = _grid(methods, columns, delta)
        panels.append(Panel(f"{title}: HM − published HM", values, labels, True, "Δ HM (points)"))
    return heatmaps(methods, columns, panels)


def target_heatmap(protocol: str, title: str) -> Callable[[Sequence[Row]], Any]:
    """xd / dg: accuracy on the source and each target, and Δ vs published."""

    def plot(table: Sequence[Row]):
        spec = protocol_spec(protocol)
        columns = [spec.source, *spec.targets, AVERAGE]
        methods = [r["method"] for r in table]
        by_method = {r["method"]: r for r in table}

        def acc(m: str, c: str):
            v = by_method[m].get(c)
            return v, _label(v)

        def delta(m: str, c: str):
            d = _delta(by_method[m].get(c), by_method[m].get(f"pub_{c}"))
            return d, _label(d, sign=True)

        panels = [Panel(f"{title}: accuracy", *_grid(methods, columns, acc), False, "accuracy (%)")]
        if any(k.startswith("pub_") and v is not None for r in table for k, v in r.items()):
            values, labels = _grid(methods, columns, delta)
            panels.append(Panel(f"{title}: − published", values, labels, True, "Δ (points)"))
        return heatmaps(methods, columns, panels)

    return plot
