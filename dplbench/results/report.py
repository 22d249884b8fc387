"""Reports: the aggregated tables of `dplbench.aggregate` rendered as Markdown and PNG plots.

`report_markdown(rows)` returns the Markdown (for the CLI to print); results/render.py writes it
and the plots into a report folder, each under a temporary name renamed into place.
One section per protocol present in the rows, then one table per ablation. Published numbers sit
beside ours: a column group for base-to-novel, an italic "published" row under each method for
the wide tables (xd, dg, few-shot).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dplbench.data.datasets import BENCHMARKS
from dplbench.plan.suites import protocol_spec
from dplbench.results import aggregate as agg
from dplbench.results import comparison, heatmap, plots, samples
from dplbench.results.ablations import ablation_tables, pivot_markdown
from dplbench.results.aggregate import AVERAGE, Row
from dplbench.results.markdown import MISSING, fmt, md_table
from dplbench.results.selection import selection_gap, selection_markdown

RULE = (
    "Mean ± sample std over seeds (std shown with ≥ 2 seeds); the Average averages the per-dataset "
    "means, and for base-to-novel takes the HM of the averaged base and novel, not the mean of the "
    "HMs (docs/protocols.md §2). Seeds b/n: base and novel seed counts when they differ. – marks missing "
    "data."
)

SUBSET_NOTE = (
    "\n\n† Published per-dataset numbers over the same datasets as ours, averaged by the same rule "
    "(our Average is incomplete)."
)


# ---------------------------------------------------------------- cells and tables


def _italic(text: str) -> str:
    return text if text == MISSING else f"*{text}*"


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
    cis = _has(table, "ci_hm")
    for r in sorted(table, key=lambda r: order[r["dataset"]]):
        ours = [fmt(r.get("base"), r.get("base_std")), fmt(r.get("novel"), r.get("novel_std"))]
        ours.append(fmt(r.get("hm")))
        if cis:
            ours += [comparison.fmt_ci(r["ci_hm"]), comparison.fmt_base_novel_ci(r)]
        theirs = [fmt(r.get(f"pub_{k}")) for k in pub]
        if r.get("pub_datasets"):
            theirs = [t if t == MISSING else f"{t} †" for t in theirs]
        if r["dataset"] == AVERAGE:
            done = "" if r.get("complete") else " (incomplete)"
            delta = [_delta(r.get("hm"), r.get("pub_hm"))] if "hm" in pub else []
            avg_rows.append([r["method"], *ours, f"{r['datasets']}{done}", *theirs, *delta])
        else:
            ds_rows.append([agg.display_name(r["dataset"]), r["method"], *ours, _seeds(r), *theirs])
    ci_head = ["HM 95% CI", "Base / Novel 95% CI"] if cis else []
    avg_head = ["Method", "Base", "Novel", "HM", *ci_head, "Datasets", *pub_head]
    avg_head += ["Δ HM"] if "hm" in pub else []
    subset = any(r.get("pub_datasets") for r in table)
    ds_head = ["Dataset", "Method", "Base", "Novel", "HM", *ci_head, "Seeds", *pub_head]
    return "\n\n".join(
        [
            "**Average over datasets**",
            md_table(avg_head, avg_rows) + (SUBSET_NOTE if subset else ""),
            "**Per dataset**",
            md_table(ds_head, ds_rows),
            *([comparison.interval_note([table])] if cis else []),
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
    head = [*(c.title() for c in first), *(agg.display_name(c) for c in columns)]
    body = []
    for r in table:
        cells = [fmt(r.get(c), r.get(f"{c}_std")) for c in columns]
        cells[-1] += average_note(r)
        body.append([str(r[c]) for c in first] + cells)
        if any(f"ci_{c}" in r for c in columns):
            cis = [comparison.fmt_ci(r.get(f"ci_{c}")) for c in columns]
            body.append(["*95% CI*", *[""] * (len(first) - 1), *cis])
        if any(k.startswith("pub_") for k in r):
            pub = [_italic(fmt(r.get(f"pub_{c}"))) for c in columns]
            body.append(["*published*", *[""] * (len(first) - 1), *pub])
    return md_table(head, body)


def _target_note(targets: Sequence[str]) -> Callable[[Row], str]:
    return lambda r: "" if r.get("complete") else f" ({r.get('targets', 0)}/{len(targets)})"


def _target_markdown(protocol: str, what: str) -> Callable[[Sequence[Row]], str]:
    def markdown(table: Sequence[Row]) -> str:
        spec = protocol_spec(protocol)
        cols = [spec.source, *spec.targets, AVERAGE]
        note = f"Average = mean over the {len(spec.targets)} {what}.\n\n"
        return note + _wide_markdown(table, cols, ["method"], _target_note(spec.targets))

    return markdown


def _fewshot_markdown(table: Sequence[Row]) -> str:
    methods = agg.methods_in_order(r["method"] for r in table)
    shots = sorted({r["shots"] for r in table} | set(protocol_spec("fewshot").shots))
    by_key = {(r["method"], r["shots"]): r for r in table}
    body = []
    for m in methods:
        cells = [by_key.get((m, k), {}) for k in shots]
        body.append([m, *(fmt(c.get(AVERAGE)) + _incomplete(c) for c in cells)])
        if any(f"pub_{AVERAGE}" in c for c in cells):
            body.append(["*published*", *(_italic(fmt(c.get(f"pub_{AVERAGE}"))) for c in cells)])
    datasets = agg.datasets_in_order(k for r in table for k in r if k in BENCHMARKS)
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
        else f" ({row.get('datasets', 0)}/{len(protocol_spec('fewshot').datasets)} datasets)"
    )


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class Inputs:
    """What the sections are made of: the selected result rows, the published numbers, bench
    rows (the cost figure) and per-epoch rows (the selection gap)."""

    rows: list[Row]
    compare: bool
    refs: Mapping[str, list[Row]] | None
    bench: Sequence[Row]
    epochs: Sequence[Row]
    outcomes: samples.Outcomes | None = None  # per-sample outcomes (None: no intervals)
    baseline: str | None = None  # the method every other is compared with (paired)


class Section(NamedTuple):
    """One part of the report: its title, its table from the inputs (empty: not shown), the
    table as Markdown, and its figure (None: no figure)."""

    title: str
    table: Callable[[Inputs, Mapping[str, Any]], Any]
    markdown: Callable[[Any], str]
    plot: Callable[[Any], Any] | None = None
    heatmap: Callable[[Any], Any] | None = None  # a second figure: methods x datasets


def _protocol(name: str, aggregate: Callable[..., list[Row]]):
    """The table of one protocol, from the rows of that protocol."""

    def table(inputs: Inputs, _: Mapping[str, Any]) -> list[Row]:
        if not any(r.get("protocol") == name for r in inputs.rows):
            return []
        return aggregate(inputs.rows, compare=inputs.compare, refs=inputs.refs)

    return table


def _studies(kind: str) -> Callable[[Inputs, Mapping[str, Any]], Any]:
    """The ablation (or sweep) tables of the rows: {(name, protocol): pivot table}."""

    def table(inputs: Inputs, _: Mapping[str, Any]) -> dict[tuple[str, str], list[Row]]:
        tables = ablation_tables(inputs.rows)
        return {(n, p): t for (k, n, p), t in tables.items() if k == kind}

    return table


def _ablations_markdown(table: Mapping[tuple[str, str], list[Row]]) -> str:
    return "\n\n".join(
        f"### {name} ({protocol})\n\n{pivot_markdown(pivot)}"
        for (name, protocol), pivot in table.items()
    )


def _cost(inputs: Inputs, done: Mapping[str, Any]) -> list[Row]:
    configs = {r.get("config") for r in inputs.rows if r.get("protocol") == "base2novel"}
    models = {json_model(c) for c in configs}  # each job's config once (a job has 3+ rows)
    return cost_table(done.get("base2novel", []), [b for b in inputs.bench if b["model"] in models])


def _with_intervals(name: str, aggregate: Callable[..., list[Row]]):
    """A protocol's table; with outcomes loaded (`dplbench report`), its 95% intervals."""

    def table(inputs: Inputs, done: Mapping[str, Any]) -> list[Row]:
        rows = _protocol(name, aggregate)(inputs, done)
        return comparison.with_intervals(rows, name, inputs.rows, inputs.outcomes)

    return table


# The report's sections, in order. A section's table may use the tables before it (`done`).
SECTIONS: dict[str, Section] = {
    "base2novel": Section(
        "Base-to-novel generalisation",
        _with_intervals("base2novel", agg.base2novel),
        _b2n_markdown,
        plots.b2n_plot,
        heatmap.b2n_heatmap,
    ),
    "comparison": Section(
        "Paired comparisons",
        lambda i, _: comparison.baseline_comparisons(i.rows, i.outcomes, i.baseline),
        lambda t: comparison.comparisons_markdown(*t),
    ),
    "xd": Section(
        "Cross-dataset transfer (trained on ImageNet)",
        _with_intervals("xd", agg.cross_dataset),
        _target_markdown("xd", "targets"),
        plots.target_plot("xd", "Cross-dataset transfer"),
        heatmap.target_heatmap("xd", "Cross-dataset transfer"),
    ),
    "dg": Section(
        "Domain generalisation (trained on ImageNet)",
        _with_intervals("dg", agg.domain_generalization),
        _target_markdown("dg", "ImageNet variants"),
        plots.target_plot("dg", "Domain generalisation"),
        heatmap.target_heatmap("dg", "Domain generalisation"),
    ),
    "fewshot": Section(
        "Few-shot classification",
        _with_intervals("fewshot", agg.fewshot),
        _fewshot_markdown,
        plots.fewshot_plot,
    ),
    "longtail": Section(
        "Long-tail base-to-novel",
        _with_intervals("longtail", agg.longtail),
        _longtail_markdown,
        plots.longtail_plot,
    ),
    "ablations": Section("Ablations", _studies("ablation"), _ablations_markdown),
    "ablation_comparisons": Section(
        "Ablations: paired against the default variant",
        lambda i, _: comparison.variant_comparisons(i.rows, i.outcomes) if i.outcomes else {},
        comparison.variants_markdown,
    ),
    "sweeps": Section("Sweeps", _studies("sweep"), _ablations_markdown),
    "partial": Section(
        "Partial splits",
        lambda i, _: [r for r in i.rows if (r.get("skipped") or 0) > 0],
        lambda t: _partial_markdown(t),
    ),
    "cost": Section("Cost and accuracy", _cost, lambda t: _cost_markdown(t), plots.cost_plot),
    "selection": Section(
        "Selection gap",
        lambda i, _: selection_gap(i.epochs, i.rows) if i.epochs else [],
        selection_markdown,
    ),
}


def _select(rows: Any, suite: str | None) -> list[Row]:
    selected = agg.as_rows(rows)
    return selected if suite is None else [r for r in selected if r.get("suite") == suite]


def cost_table(b2n: Sequence[Row], bench: Sequence[Row]) -> list[Row]:
    """Each method's training cost and inference speed (bench rows of one device, the backbone
    its results ran on) beside its base-to-novel Average HM (the paper's Fig. 5b)."""
    hm = {r["method"]: r["hm"] for r in b2n if r["dataset"] == AVERAGE and r["hm"] is not None}
    out = []
    for r in bench:
        if r["method"] in hm:
            keep = ("method", "model", "params", "train_ms", "eval_img_s", "peak_mib")
            out.append({**{k: r.get(k) for k in keep}, "hm": hm[r["method"]]})
    return out


def report_tables(
    rows: Any,
    suite: str | None = None,
    compare: bool = True,
    refs: Mapping[str, list[Row]] | None = None,
    bench: Sequence[Row] = (),
    epochs: Sequence[Row] = (),
    outcomes: samples.Outcomes | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """The non-empty tables of SECTIONS, in that order: the protocols present (with 95%
    intervals when `outcomes` is given, an empty one meaning seeds only), `comparison` (paired,
    against `baseline`), `ablations` and `sweeps` ({(name, protocol): pivot table}) when their
    rows exist, `partial` splits, `cost` (bench rows beside base-to-novel HM) and `selection`
    (per-epoch test rows)."""
    if compare and refs is None:
        refs = agg.reference_tables()
    inputs = Inputs(_select(rows, suite), compare, refs, bench, epochs, outcomes, baseline)
    tables: dict[str, Any] = {}
    for name, section in SECTIONS.items():
        table = section.table(inputs, tables)
        if table:
            tables[name] = table
    return tables


def json_model(config: str | None) -> str | None:
    """The backbone a result row's job ran on, from its `config` column."""
    import json

    if not config:
        return None
    return (json.loads(config).get("config") or {}).get("backbone", {}).get("model")


def _no_results(suite: str | None) -> str:
    return f"No results to report{f' for suite `{suite}`' if suite else ''}.\n"


def _cost_markdown(rows: Sequence[Row]) -> str:
    body = [
        [r["method"], f"{r['params']:,}", fmt(r.get("train_ms")), fmt(r.get("eval_img_s")),
         fmt(r.get("peak_mib")), fmt(r["hm"])]
        for r in sorted(rows, key=lambda r: r["hm"])
    ]  # fmt: skip
    note = (
        "Training cost (one step at the bench batch) and inference speed from `dplbench bench "
        "model` on the same backbone, beside each method's base-to-novel Average HM."
    )
    head = ["Method", "Trainable params", "Train ms/step", "Eval img/s", "Peak MiB", "HM"]
    return note + "\n\n" + md_table(head, body)


def _partial_markdown(rows: Sequence[Row]) -> str:
    """Rows whose accuracy leaves corrupt samples out (run with --on-data-error skip)."""
    body = [
        [r["method"], agg.display_name(r["dataset"]), r.get("subsample") or "", str(r.get("seed")),
         str(r["skipped"]), str(r["total"]), fmt(r.get("accuracy"))]
        for r in sorted(rows, key=lambda r: (r["dataset"], r["method"], r.get("seed") or 0))
    ]  # fmt: skip
    note = (
        "These accuracies are over the samples that could be read: the skipped ones (corrupt "
        "images, `--on-data-error skip`) are left out of `total`."
    )
    head = ["Method", "Dataset", "Classes", "Seed", "Skipped", "Total", "Accuracy"]
    return note + "\n\n" + md_table(head, body)


def sections_markdown(
    tables: Mapping[str, Any], suite: str | None, images: Mapping[str, Sequence[str]]
) -> str:
    if not tables:
        return _no_results(suite)
    parts = [f"# dplbench report{f': suite `{suite}`' if suite else ''}", RULE]
    for name, table in tables.items():
        section = SECTIONS[name]
        parts += [f"## {section.title}", section.markdown(table)]
        parts += [f"![{section.title}]({image})" for image in images.get(name, ())]
    return "\n\n".join(parts) + "\n"


def report_markdown(
    rows: Any,
    suite: str | None = None,
    compare: bool = True,
    refs: Mapping[str, list[Row]] | None = None,
    bench: Sequence[Row] = (),
    epochs: Sequence[Row] = (),
) -> str:
    """The report as Markdown (no plots); a one-line message when there is nothing to report."""
    return sections_markdown(report_tables(rows, suite, compare, refs, bench, epochs), suite, {})
