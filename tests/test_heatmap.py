"""The report's figures at benchmark scale (#29): the heatmap labels each cell with its value and
interval, adds a Δ-vs-published panel only where published numbers exist, and stays about a
page at 12 methods x 15 datasets; the bar chart's legend sits outside the bars."""

import numpy as np
import pytest

from dplbench.data.datasets import BENCHMARKS
from dplbench.results import plots
from dplbench.results.aggregate import AVERAGE
from dplbench.results.heatmap import b2n_heatmap

METHODS = [f"m{i:02d}" for i in range(12)]


def _table(methods, datasets, published=False):
    """Base-to-novel table rows with HM, an interval and (optionally) published HM."""
    rows = []
    for i, m in enumerate(methods):
        for j, d in enumerate([*datasets, AVERAGE]):
            hm = 50.0 + i + 0.5 * j
            row = {"method": m, "dataset": d, "hm": hm, "ci_hm": (hm - 2.25, hm + 1.75)}
            if published:
                row["pub_hm"] = hm - 1.0
            rows.append(row)
    return rows


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


@pytest.mark.parametrize(("methods", "datasets"), [(3, 11), (12, 15)])
def test_heatmap_cells_carry_value_and_interval_and_fit_a_page(methods, datasets):
    names = list(BENCHMARKS)[:datasets]
    fig = b2n_heatmap(_table(METHODS[:methods], names))
    heat = [ax for ax in fig.axes if ax.get_title()]
    assert len(heat) == 1  # no published numbers: no Δ panel
    texts = _texts(heat[0])
    assert len(texts) == methods * (datasets + 1)
    assert "50.00\n[47.8, 51.8]" in texts  # m00 on the first dataset: value, then its interval
    width, height = fig.get_size_inches()
    assert width <= 14 and height <= 9  # 12 x 15 x 2 panels is still about one page


def test_delta_panel_only_with_published_numbers():
    fig = b2n_heatmap(_table(METHODS[:9], list(BENCHMARKS)[1:12], published=True))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["Base-to-novel: HM [95% CI]", "Base-to-novel: HM − published HM"]
    delta = next(ax for ax in fig.axes if "published" in ax.get_title())
    assert set(_texts(delta)) == {"+1.00"}
    # The diverging scale is centred on 0, whatever the range of the differences.
    image = delta.images[0]
    assert image.norm.vmin == pytest.approx(-image.norm.vmax)


def test_bar_legend_sits_outside_the_bars():
    cats = list(BENCHMARKS)[:12]
    series = {m: list(np.linspace(40, 80, len(cats))) for m in METHODS[:9]}
    fig = plots.bars(cats, series, {}, "HM (%)", "t")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes, over no bar
    assert fig.get_size_inches()[0] <= 14


def test_bars_give_every_one_of_twelve_methods_its_own_colour():
    cats = list(BENCHMARKS)[:3]
    series = {m: [50.0, 60.0, 70.0] for m in METHODS}
    fig = plots.bars(cats, series, {}, "HM (%)", "t")
    handles = fig.axes[0].get_legend().legend_handles
    assert len({tuple(h.get_facecolor()) for h in handles}) == len(METHODS)
