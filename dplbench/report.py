"""Reports: the aggregated tables of `dplbench.aggregate` rendered as Markdown and PNG plots.

`report_markdown(rows)` returns the Markdown (for the CLI to print); `render_report(rows, out_dir)`
writes `report.md` and the plots next to it, each under a temporary name renamed into place.
One section per protocol present in the rows, then one table per ablation. Published numbers sit
beside ours: a column group for base-to-novel, an italic "published" row under each method for
the wide tables (xd, dg, few-shot).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from dplbench import aggregate as agg
from dplbench.aggregate import AVERAGE, DG_TARGETS, SHOTS, XD_SOURCE, XD_TARGETS, Row
from dplbench.atomic import write_atomic

MISSING = "–"
LABEL = {
    "imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars", "oxford_flowers": "Flowers102", "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DTD", "eurosat": "EuroSAT",
    "ucf101": "UCF101", "imagenetv2": "ImageNet-V2", "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A", "imagenet_r": "ImageNet-R", AVERAGE: "Average",
}  # fmt: skip
RULE = (
    "Mean ± sample std over seeds (std shown with ≥ 2 seeds); the Average averages the per-dataset "
    "means, and for base-to-novel takes the HM of the averaged base and novel, not the mean of the "
    "HMs (PROTOCOLS §2). Seeds b/n: base and novel seed counts when they differ. – marks missing "
    "data."
)

SUBSET_NOTE = (
    "\n\n† Published per-dataset numbers over the same datasets as ours, averaged by the same rule "
    "(our Average is incomplete)."
)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    plots: tuple[Path, ...]


# ---------------------------------------------------------------- cells and tables


def fmt(value: float | None, std: float | None = None) -> str:
    """2-decimal number, `± std` when a std exists (≥ 2 seeds), `–` when missing."""
    if value is None:
        return MISSING
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def _italic(text: str) -> str:
    return text if text == MISSING else f"*{text}*"


def md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _label(key: str) -> str:
    return LABEL.get(key, key)


def _seeds(row: Row) -> str:
    nb, nn = row.get("n_base", 0), row.get("n_novel", 0)
    return str(nb) if nb == nn else f"{nb}/{nn}"


def _has(table: Sequence[Row], key: str) -> bool:
    return any(key in r for r in table)


# ---------------------------------------------------------------- base-to-novel / long-tail


def _b2n_markdown(table: Sequence[Row]) -> str:
    pub = [k for k in ("base", "novel", "hm") if _has(table, f"pub_{k}")]
    pub_head = [f"{k.upper() if k == 'hm' else k.title()} (published)" for k in pub]
    avg_rows, ds_rows = [], []
    # Per-dataset rows grouped by dataset (methods side by side), as the papers' tables.
    order = {d: i for i, d in enumerate(agg.datasets_in_order(r["dataset"] for r in table))}
    for r in sorted(table, key=lambda r: order[r["dataset"]]):
        ours = [fmt(r.get("base"), r.get("base_std")), fmt(r.get("novel"), r.get("novel_std"))]
        ours.append(fmt(r.get("hm")))
        theirs = [fmt(r.get(f"pub_{k}")) for k in pub]
        if r.get("pub_datasets"):
            theirs = [t if t == MISSING else f"{t} †" for t in theirs]
        if r["dataset"] == AVERAGE:
            done = "" if r.get("complete") else " (incomplete)"
            delta = [_delta(r.get("hm"), r.get("pub_hm"))] if "hm" in pub else []
            avg_rows.append([r["method"], *ours, f"{r['datasets']}{done}", *theirs, *delta])
        else:
            ds_rows.append([_label(r["dataset"]), r["method"], *ours, _seeds(r), *theirs])
    avg_head = ["Method", "Base", "Novel", "HM", "Datasets", *pub_head]
    avg_head += ["Δ HM"] if "hm" in pub else []
    subset = any(r.get("pub_datasets") for r in table)
    return "\n\n".join(
        [
            "**Average over datasets**",
            md_table(avg_head, avg_rows) + (SUBSET_NOTE if subset else ""),
            "**Per dataset**",
            md_table(["Dataset", "Method", "Base", "Novel", "HM", "Seeds", *pub_head], ds_rows),
        ]
    )


def _delta(ours: float | None, published: float | None) -> str:
    return MISSING if ours is None or published is None else f"{ours - published:+.2f}"


def _longtail_markdown(table: Sequence[Row]) -> str:
    parts = []
    for ratio in sorted({r.get("imbalance") or 0 for r in table}):
        sub = [r for r in table if (r.get("imbalance") or 0) == ratio]
        parts += [f"### Imbalance ratio {ratio:g}", _b2n_markdown(sub)]
    return "\n\n".join(parts)


# ---------------------------------------------------------------- wide tables (xd, dg, few-shot)


def _wide_markdown(
    table: Sequence[Row], columns: Sequence[str], first: Sequence[str], average_note: Callable
) -> str:
    """One row per table row, then an italic published row under it when `pub_*` columns exist."""
    head = [*(c.title() for c in first), *(_label(c) for c in columns)]
    body = []
    for r in table:
        cells = [fmt(r.get(c), r.get(f"{c}_std")) for c in columns]
        cells[-1] += average_note(r)
        body.append([str(r[c]) for c in first] + cells)
        if any(k.startswith("pub_") for k in r):
            pub = [_italic(fmt(r.get(f"pub_{c}"))) for c in columns]
            body.append(["*published*", *[""] * (len(first) - 1), *pub])
    return md_table(head, body)


def _target_note(targets: Sequence[str]) -> Callable[[Row], str]:
    return lambda r: "" if r.get("complete") else f" ({r.get('targets', 0)}/{len(targets)})"


def _xd_markdown(table: Sequence[Row]) -> str:
    cols = [XD_SOURCE, *XD_TARGETS, AVERAGE]
    return "Average = mean over the 10 targets.\n\n" + _wide_markdown(
        table, cols, ["method"], _target_note(XD_TARGETS)
    )


def _dg_markdown(table: Sequence[Row]) -> str:
    cols = [XD_SOURCE, *DG_TARGETS, AVERAGE]
    return "Average = mean over the 4 ImageNet variants.\n\n" + _wide_markdown(
        table, cols, ["method"], _target_note(DG_TARGETS)
    )


def _fewshot_markdown(table: Sequence[Row]) -> str:
    methods = agg.methods_in_order(r["method"] for r in table)
    shots = sorted({r["shots"] for r in table} | set(SHOTS))
    by_key = {(r["method"], r["shots"]): r for r in table}
    body = []
    for m in methods:
        cells = [by_key.get((m, k), {}) for k in shots]
        body.append([m, *(fmt(c.get(AVERAGE)) + _incomplete(c) for c in cells)])
        if any(f"pub_{AVERAGE}" in c for c in cells):
            body.append(["*published*", *(_italic(fmt(c.get(f"pub_{AVERAGE}"))) for c in cells)])
    datasets = agg.datasets_in_order(k for r in table for k in r if k in agg.DATASETS)
    detail = [{k: v for k, v in r.items() if not k.startswith("pub_")} for r in table]
    return "\n\n".join(
        [
            "**Average over datasets, by shots K**",
            md_table(["Method", *(f"K={k}" for k in shots)], body),
            "**Per dataset**",
            _wide_markdown(detail, [*datasets, AVERAGE], ["method", "shots"], _incomplete),
        ]
    )


def _incomplete(row: Row) -> str:
    return (
        ""
        if not row or row.get("complete")
        else f" ({row.get('datasets', 0)}/{len(agg.BASE2NOVEL_DATASETS)} datasets)"
    )


# ---------------------------------------------------------------- ablations


def _ablation_markdown(tables: Mapping[tuple[str, str], list[Row]]) -> str:
    parts = []
    for (name, protocol), table in tables.items():
        keys = [k for k in table[0] if k not in _VALUE_KEYS]
        if "hm" in table[0]:
            head, cols = ["Base", "Novel", "HM"], ["base", "novel", "hm"]
        else:
            head, cols = ["Accuracy"], ["accuracy"]
        body = [
            [str(r[k]) for k in keys]
            + [fmt(r.get(c), r.get(f"{c}_std")) for c in cols]
            + [str(r.get("datasets", ""))]
            for r in table
        ]
        parts += [f"### {name} ({protocol})", md_table([*keys, *head, "Datasets"], body)]
    return "\n\n".join(parts)


_VALUE_KEYS = {
    "base", "novel", "hm", "base_std", "novel_std", "n_base", "n_novel", "datasets", "seeds",
    "accuracy", "accuracy_std",
}  # fmt: skip


# ---------------------------------------------------------------- plots


def _figure(width: float = 10, height: float = 4):
    # The Figure API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    published: Mapping[str, Sequence[float | None]],
    ylabel: str,
    title: str,
):
    """Grouped bars, one group per category and one bar per method; published values as black
    markers on the matching bar."""
    fig, ax = _figure(max(6.0, 0.9 * len(categories) * max(1, len(series)) ** 0.5), 4)
    width = 0.8 / max(1, len(series))
    marked = False
    for i, (method, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(categories))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=method)
        pub = [(x, p) for x, p in zip(xs, published.get(method, [])) if p is not None]
        if pub:
            label = None if marked else "published"
            ax.scatter(*zip(*pub), marker="_", s=120, color="black", zorder=3, label=label)
            marked = True
    ax.set_xticks(range(len(categories)), [_label(c) for c in categories], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=min(4, len(series) + 1))
    return fig


def _b2n_plot(table: Sequence[Row], title: str = "Base-to-novel: HM per dataset"):
    datasets = agg.datasets_in_order(r["dataset"] for r in table if r["dataset"] != AVERAGE)
    cats = [*datasets, AVERAGE]
    by_key = {(r["method"], r["dataset"]): r for r in table}
    methods = agg.methods_in_order(r["method"] for r in table)
    series = {m: [by_key.get((m, d), {}).get("hm") for d in cats] for m in methods}
    pub = {m: [by_key.get((m, d), {}).get("pub_hm") for d in cats] for m in methods}
    return _bars(cats, series, pub, "HM (%)", title)


def _longtail_plot(table: Sequence[Row]):
    ratios = sorted({r.get("imbalance") or 0 for r in table})
    # One figure: the report shows the largest ratio's HM (the others are in the tables).
    sub = [r for r in table if (r.get("imbalance") or 0) == ratios[-1]]
    return _b2n_plot(sub, f"Long-tail base-to-novel (imbalance {ratios[-1]:g}): HM per dataset")


def _target_plot(targets: Sequence[str], title: str) -> Callable[[Sequence[Row]], Any]:
    def plot(table: Sequence[Row]):
        cats = [XD_SOURCE, *targets, AVERAGE]
        series = {r["method"]: [r.get(c) for c in cats] for r in table}
        pub = {r["method"]: [r.get(f"pub_{c}") for c in cats] for r in table}
        return _bars(cats, series, pub, "accuracy (%)", title)

    return plot


def _fewshot_plot(table: Sequence[Row]):
    fig, ax = _figure(6, 4)
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
    ax.set_xscale("log", base=2)
    ax.set_xticks(SHOTS, [str(k) for k in SHOTS])
    ax.set_xlabel("shots per class (K)")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title("Few-shot classification")
    ax.legend(fontsize="small")
    return fig


# ---------------------------------------------------------------- sections


class Section(NamedTuple):
    title: str
    aggregate: Callable[..., list[Row]]
    markdown: Callable[[Sequence[Row]], str]
    plot: Callable[[Sequence[Row]], Any]


SECTIONS: dict[str, Section] = {
    "base2novel": Section("Base-to-novel generalisation", agg.base2novel, _b2n_markdown, _b2n_plot),
    "xd": Section(
        "Cross-dataset transfer (trained on ImageNet)",
        agg.cross_dataset,
        _xd_markdown,
        _target_plot(XD_TARGETS, "Cross-dataset transfer"),
    ),
    "dg": Section(
        "Domain generalisation (trained on ImageNet)",
        agg.domain_generalization,
        _dg_markdown,
        _target_plot(DG_TARGETS, "Domain generalisation"),
    ),
    "fewshot": Section("Few-shot classification", agg.fewshot, _fewshot_markdown, _fewshot_plot),
    "longtail": Section(
        "Long-tail base-to-novel", agg.longtail, _longtail_markdown, _longtail_plot
    ),
}


def _select(rows: Any, suite: str | None) -> list[Row]:
    selected = agg.as_rows(rows)
    return selected if suite is None else [r for r in selected if r.get("suite") == suite]


def report_tables(
    rows: Any,
    suite: str | None = None,
    compare: bool = True,
    refs: Mapping[str, list[Row]] | None = None,
) -> dict[str, Any]:
    """The aggregated tables of the protocols present (keys of SECTIONS, in that order) plus
    `ablations` ({(ablation, protocol): pivot table}) when sweep rows exist."""
    selected = _select(rows, suite)
    if compare and refs is None:
        refs = agg.reference_tables()
    protocols = {r.get("protocol") for r in selected}
    tables: dict[str, Any] = {}
    for name, section in SECTIONS.items():
        if name in protocols:
            table = section.aggregate(selected, compare=compare, refs=refs)
            if table:
                tables[name] = table
    ablations = agg.ablation_tables(selected)
    if ablations:
        tables["ablations"] = ablations
    return tables


def _no_results(suite: str | None) -> str:
    return f"No results to report{f' for suite `{suite}`' if suite else ''}.\n"


def _markdown(tables: Mapping[str, Any], suite: str | None, images: Mapping[str, str]) -> str:
    if not tables:
        return _no_results(suite)
    parts = [f"# dplbench report{f': suite `{suite}`' if suite else ''}", RULE]
    for name, table in tables.items():
        if name == "ablations":
            parts += ["## Ablations and sweeps", _ablation_markdown(table)]
            continue
        parts += [f"## {SECTIONS[name].title}", SECTIONS[name].markdown(table)]
        if name in images:
            parts.append(f"![{SECTIONS[name].title}]({images[name]})")
    return "\n\n".join(parts) + "\n"


def report_markdown(
    rows: Any,
    suite: str | None = None,
    compare: bool = True,
    refs: Mapping[str, list[Row]] | None = None,
) -> str:
    """The report as Markdown (no plots); a one-line message when there is nothing to report."""
    return _markdown(report_tables(rows, suite, compare, refs), suite, {})


def render_report(
    rows: Any,
    out_dir: str | os.PathLike,
    suite: str | None = None,
    compare: bool = True,
    refs: Mapping[str, list[Row]] | None = None,
) -> ReportFiles:
    """Write `out_dir/report.md` and one PNG per protocol section (`<protocol>.png`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = report_tables(rows, suite, compare, refs)
    images, plots = {}, []
    for name, table in tables.items():
        if name in SECTIONS:
            fig = SECTIONS[name].plot(table)
            path = write_atomic(out / f"{name}.png", partial(fig.savefig, format="png", dpi=120))
            images[name] = path.name
            plots.append(path)
    text = _markdown(tables, suite, images)
    md = write_atomic(out / "report.md", lambda p: p.write_text(text, encoding="utf-8"))
    return ReportFiles(markdown=md, plots=tuple(plots))
