"""The report's figures, drawn with matplotlib's Figure API on an Agg canvas (no pyplot state,
no display). Each function takes an aggregated table (results/aggregate.py) and returns a Figure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dplbench.plan.suites import protocol_spec
from dplbench.results import aggregate as agg
from dplbench.results.aggregate import AVERAGE, Row


def figure(width: float = 10, height: float = 4):
    # The Figure API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    published: Mapping[str, Sequence[float | None]],
    ylabel: str,
    title: str,
):
    """Grouped bars, one group per category and one bar per method; published values as black
    markers on the matching bar."""
    # Wider with more bars, up to a page's width (the legend sits right of the axes).
    fig, ax = figure(min(14.0, max(6.0, 0.9 * len(categories) * max(1, len(series)) ** 0.5)), 4)
    from matplotlib import colormaps

    width = 0.8 / max(1, len(series))
    marked = False
    # tab10 repeats its colours from the 11th method on: then tab20, one colour each up to 20.
    colors = colormaps["tab20" if len(series) > 10 else "tab10"]
    for i, (method, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(categories))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=method,
               color=colors(i % colors.N))  # fmt: skip
        pub = [(x, p) for x, p in zip(xs, published.get(method, [])) if p is not None]
        if pub:
            legend = None if marked else "published"
            ax.scatter(*zip(*pub), marker="_", s=120, color="black", zorder=3, label=legend)
            marked = True
    ax.set_xticks(
        range(len(categories)), [agg.display_name(c) for c in categories], rotation=30, ha="right"
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # Outside the axes: inside, at 9+ methods it covered the last groups of bars (#29).
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), ncols=1)
    return fig


def b2n_plot(table: Sequence[Row], title: str = "Base-to-novel: HM per dataset"):
    datasets = agg.datasets_in_order(r["dataset"] for r in table if r["dataset"] != AVERAGE)
    cats = [*datasets, AVERAGE]
    by_key = {(r["method"], r["dataset"]): r for r in table}
    methods = agg.methods_in_order(r["method"] for r in table)
    series = {m: [by_key.get((m, d), {}).get("hm") for d in cats] for m in methods}
    pub = {m: [by_key.get((m, d), {}).get("pub_hm") for d in cats] for m in methods}
    return bars(cats, series, pub, "HM (%)", title)


def longtail_plot(table: Sequence[Row]):
    ratios = sorted({r.get("imbalance") or 0 for r in table})
    # One figure: the report shows the largest ratio's HM (the others are in the tables).
    sub = [r for r in table if (r.get("imbalance") or 0) == ratios[-1]]
    return b2n_plot(sub, f"Long-tail base-to-novel (imbalance {ratios[-1]:g}): HM per dataset")


def target_plot(protocol: str, title: str) -> Callable[[Sequence[Row]], Any]:
    """Source and target accuracies of xd / dg, one bar per method."""

    def plot(table: Sequence[Row]):
        spec = protocol_spec(protocol)
        cats = [spec.source, *spec.targets, AVERAGE]
        series = {r["method"]: [r.get(c) for c in cats] for r in table}
        pub = {r["method"]: [r.get(f"pub_{c}") for c in cats] for r in table}
        return bars(cats, series, pub, "accuracy (%)", title)

    return plot


def fewshot_plot(table: Sequence[Row]):
    fig, ax = figure(6, 4)
    for m in agg.methods_in_order(r["method"] for r in table):
        pts = sorted(
            (r["shots"], r[AVERAGE]) for r in table if r["method"] == m and r[AVERAGE] is not None
        )
        line = ax.plot(*zip(*pts), marker="o", label=m)[0] if pts else None
        pub = sorted(
            (r["shots"], r[f"pub_{AVERAGE}"])
            for r in table
            if r["method"] == m and r.get(f"pub_{AVERAGE}") is not None
        )
        if pub:
            color = line.get_color() if line else None
            ax.plot(*zip(*pub), ls="--", marker="x", color=color, label=f"{m} (published)")
    shots = protocol_spec("fewshot").shots
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class (K)")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title("Few-shot classification")
    ax.legend(fontsize="small")
    return fig


def objective_plot(trials: Sequence[Row], params: Sequence[str], name: str):
    """A sweep's objective against each parameter, one panel per parameter (trial summary rows
    of results/sweeps.py)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in trials if r["objective"] is not None]
    fig = Figure(figsize=(4.5 * len(params), 3.6))
    FigureCanvasAgg(fig)
    for i, p in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        numeric = all(isinstance(r.get(p), int | float) for r in rows)
        labels = sorted({str(r.get(p)) for r in rows})
        for status, marker in (("done", "o"), ("stopped", "x"), ("failed", "s")):
            sel = [r for r in rows if r["status"] == status]
            xs = [r[p] if numeric else labels.index(str(r.get(p))) for r in sel]
            ax.scatter(xs, [r["objective"] for r in sel], marker=marker, label=status)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        elif (
            rows
            and min(r[p] for r in rows) > 0
            and max(r[p] for r in rows) / min(r[p] for r in rows) > 50
        ):
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel("objective (val, %)")
        ax.legend(fontsize=7)
    fig.suptitle(f"sweep {name}")
    fig.tight_layout()
    return fig


def cost_plot(table: Sequence[Row]):
    """The paper's Fig. 5b: training cost and inference speed against base-to-novel HM, one
    point per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(
        (("train_ms", "training cost (ms per step)"), ("eval_img_s", "inference (images/s)"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        pts = [r for r in table if r.get(key)]
        ax.scatter([r[key] for r in pts], [r["hm"] for r in pts])
        for r in pts:
            ax.annotate(r["method"], (r[key], r["hm"]), fontsize="small", xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("base-to-novel HM (%)")
    fig.suptitle("Cost and accuracy")
    return fig
