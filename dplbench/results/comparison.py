"""Intervals in the report's tables and paired comparisons against a baseline (#29;
docs/results.md §4): the numbers of results/intervals.py over the parts of results/samples.py,
as table columns and Markdown."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dplbench.errors import ConfigError
from dplbench.plan.suites import protocol_spec
from dplbench.results import aggregate as agg
from dplbench.results import samples
from dplbench.results.aggregate import AVERAGE, Row
from dplbench.results.intervals import (
    RESAMPLES,
    Combine,
    Part,
    accuracy_combine,
    b2n_combine,
    interval,
    mcnemar,
    paired_interval,
    point,
)
from dplbench.results.markdown import MISSING, md_table

B2N = ("base", "novel")
Parts = Mapping[str, Mapping[str, Part]]  # method -> dataset -> Part


def b2n_parts(rows: Sequence[Row], outcomes: samples.Outcomes | None) -> dict[str, dict[str, Part]]:
    """{method: {dataset: Part}} of the base-to-novel rows (no outcomes: seeds only)."""
    found = outcomes if outcomes is not None else samples.Outcomes({})
    return samples.parts(rows, "base2novel", B2N, found)


def _ci(low, high, k: int) -> tuple[float, float] | None:
    return None if low is None else (float(low[k]), float(high[k]))


def _b2n_datasets(table: Sequence[Row], row: Row) -> list[str]:
    """The datasets behind a base-to-novel row: itself, or for an Average those with both base
    and novel (aggregate.hm_average)."""
    if row["dataset"] != AVERAGE:
        return [row["dataset"]]
    return [
        r["dataset"]
        for r in table
        if r["method"] == row["method"] and r["dataset"] != AVERAGE
        and r.get("base") is not None and r.get("novel") is not None
    ]  # fmt: skip


def add_b2n_intervals(table: list[Row], parts: Parts) -> list[Row]:
    """Each base-to-novel row (per dataset and Average) with `ci_base`, `ci_novel`, `ci_hm`:
    (low, high) of the 95% interval, None where nothing can be resampled (one seed and no
    outcomes); `ci_seeds_only`: the datasets resampled by seeds only."""
    for r in table:
        datasets = _b2n_datasets(table, r)
        mine = {d: parts[r["method"]][d] for d in datasets if d in parts.get(r["method"], {})}
        r.update(ci_base=None, ci_novel=None, ci_hm=None, ci_seeds_only=())
        if not datasets or len(mine) < len(datasets):
            continue
        iv = interval(mine, b2n_combine(datasets))
        r.update(
            {f"ci_{k}": _ci(iv.low, iv.high, i) for i, k in enumerate(("base", "novel", "hm"))}
        )
        r["ci_seeds_only"] = iv.seeds_only
    return table


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return MISSING if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def fmt_base_novel_ci(row: Row) -> str:
    return f"{fmt_ci(row['ci_base'])} / {fmt_ci(row['ci_novel'])}"


def with_intervals(
    table: list[Row], protocol: str, rows: Sequence[Row], outcomes: samples.Outcomes | None
) -> list[Row]:
    """A protocol's aggregated table with its 95% intervals (b2n, long-tail per ratio:
    `add_b2n_intervals`; xd, dg, few-shot: `add_wide_intervals`); as it is when no outcomes
    were loaded (None)."""
    if not table or outcomes is None:
        return table
    if protocol == "base2novel":
        return add_b2n_intervals(table, b2n_parts(rows, outcomes))
    if protocol == "longtail":  # base-to-novel tables, one per imbalance ratio
        for ratio in {r.get("imbalance") for r in table}:
            mine = [r for r in rows if r.get("imbalance") == ratio]
            parts = samples.parts(mine, "longtail", B2N, outcomes)
            add_b2n_intervals([r for r in table if r.get("imbalance") == ratio], parts)
        return table
    return add_wide_intervals(table, rows, outcomes, protocol)


def fmt_p(p: float | None) -> str:
    if p is None:
        return MISSING
    # A share of RESAMPLES replicates: 0 of them means below one in RESAMPLES.
    return f"<{1 / RESAMPLES:.4f}" if p == 0 else f"{p:.4f}"


def interval_note(tables: Sequence[Sequence[Row]]) -> str:
    """What the intervals resample, and the cells that lack per-sample outcomes."""
    lacking = sorted(
        {(r["method"], d) for t in tables for r in t for d in r.get("ci_seeds_only", ())}
    )
    none = sorted({r["method"] for t in tables for r in t if "ci_hm" in r and r["ci_hm"] is None})
    text = (
        "95% CI: percentile bootstrap (2,000 replicates, seeded) resampling the seeds and, "
        "where per-sample outcomes exist, the test samples (the same draw for every seed); an "
        "Average resamples each dataset separately (docs/results.md §4)."
    )
    if lacking:
        cells = ", ".join(f"{m} on {agg.display_name(d)}" for m, d in lacking)
        text += f" Seeds only (no per-sample outcomes): {cells}."
    if none:
        text += f" No interval (one seed, no outcomes): {', '.join(none)}."
    return text


# ---------------------------------------------------------------- paired comparisons


def _mcnemar(a: Part, b: Part, subsamples: Sequence[str]) -> str:
    """McNemar's exact test per seed the two share, on all the dataset's scored samples (the
    subsamples together): `p` with one seed, else how many seeds show p < 0.05."""
    shared = [s for s in a.seed_ids if s in b.seed_ids]
    if not shared or any(sub not in a.outcomes or sub not in b.outcomes for sub in subsamples):
        return MISSING
    ps = []
    for s in shared:
        ia, ib = a.seed_ids.index(s), b.seed_ids.index(s)
        xa = np.concatenate([a.outcomes[sub][ia] for sub in subsamples])
        xb = np.concatenate([b.outcomes[sub][ib] for sub in subsamples])
        keep = ~(np.isnan(xa) | np.isnan(xb))
        ps.append(mcnemar(xa[keep] > 0, xb[keep] > 0))
    if len(ps) == 1:
        return fmt_p(ps[0])
    return f"p<0.05 in {sum(p < 0.05 for p in ps)}/{len(ps)} seeds"


@dataclass(frozen=True)
class Metrics:
    """What a paired comparison reports: the scores' names, the subsamples they read, which
    score decides "holds" (`headline`), and the statistic over a list of datasets."""

    names: tuple[str, ...]
    subsamples: tuple[str, ...]
    headline: int
    combine: Callable[[list[str]], Combine]


B2N_METRICS = Metrics(("Base", "Novel", "HM"), B2N, 2, b2n_combine)
ACCURACY = Metrics(("Accuracy",), ("all",), 0, accuracy_combine)


def paired_comparisons(
    parts: Parts,
    baseline: str,
    metrics: Metrics = B2N_METRICS,
    order: Sequence[str] | None = None,
    averaged: Callable[[list[str]], list[str]] = list,
) -> dict[str, list[Row]]:
    """{method: rows}: per dataset both methods have, then the Average (over `averaged` of
    those), A − baseline of each score: `a`, `b` (their headline scores), `delta`, `low`,
    `high`, `p` ([k] each), `mcnemar`, `seeds_only`. `order`: of the compared labels (default:
    methods')."""
    if baseline not in parts:
        have = ", ".join(agg.methods_in_order(parts)) or "none"
        raise ConfigError(f"baseline {baseline!r} has no results here; compared: {have}")
    base = parts[baseline]
    out = {}
    labels = [m for m in (order or agg.methods_in_order(parts)) if m in parts]
    for method in [m for m in labels if m != baseline]:
        mine = parts[method]
        common = agg.datasets_in_order(d for d in mine if d in base)
        over = averaged(common)
        rows = []
        groups = [(d, [d]) for d in common] + ([(AVERAGE, over)] if over else [])
        for name, ds in groups:
            a = {d: mine[d] for d in ds}
            b = {d: base[d] for d in ds}
            combine = metrics.combine(ds)
            iv = paired_interval(a, b, combine)
            k = metrics.headline
            rows.append({
                "dataset": name, "a": float(point(a, combine)[k]), "b": float(point(b, combine)[k]),
                "delta": iv.value, "low": iv.low, "high": iv.high, "p": iv.p,
                "mcnemar": "" if name == AVERAGE else _mcnemar(a[ds[0]], b[ds[0]], metrics.subsamples),
                "seeds_only": iv.seeds_only,
            })  # fmt: skip
        out[method] = rows
    return out


def b2n_comparisons(
    parts: Parts, baseline: str, order: Sequence[str] | None = None
) -> dict[str, list[Row]]:
    """`paired_comparisons` of base, novel and HM."""
    return paired_comparisons(parts, baseline, B2N_METRICS, order)


def _holds(r: Row, k: int) -> int:
    """+1 / −1 when the 95% interval of the difference lies above / below 0, else 0."""
    if r["low"] is None:
        return 0
    return 1 if r["low"][k] > 0 else -1 if r["high"][k] < 0 else 0


def summary_line(method: str, baseline: str, rows: Sequence[Row], metrics: Metrics) -> str:
    k, name = metrics.headline, metrics.names[metrics.headline]
    per = [r for r in rows if r["dataset"] != AVERAGE]
    up = sum(_holds(r, k) > 0 for r in per)
    down = sum(_holds(r, k) < 0 for r in per)
    line = (
        f"{method} − {baseline}: the {name} difference holds (95% interval excludes 0) on "
        f"{up + down} of {len(per)} datasets ({up} higher, {down} lower)"
    )
    avg = [r for r in rows if r["dataset"] == AVERAGE]
    if avg:
        r = avg[0]
        line += f"; Average Δ {name} {r['delta'][k]:+.2f} {fmt_ci(_ci(r['low'], r['high'], k))}"
    return line + "."


def comparison_markdown(
    baseline: str, tables: Mapping[str, list[Row]], level: int = 3, metrics: Metrics = B2N_METRICS
) -> str:
    k, name = metrics.headline, metrics.names[metrics.headline]
    parts = []
    for method, rows in tables.items():
        body = []
        for r in rows:
            cells = [
                f"{r['delta'][i]:+.2f} {fmt_ci(_ci(r['low'], r['high'], i))}"
                for i in range(len(metrics.names))
            ]
            holds = {1: "yes (+)", -1: "yes (−)", 0: "no"}[_holds(r, k)]
            if r["low"] is None:
                holds = MISSING
            mark = " §" if r["seeds_only"] else ""
            body.append([
                agg.display_name(r["dataset"]) + mark, f"{r['a']:.2f}", f"{r['b']:.2f}", *cells,
                fmt_p(None if r["p"] is None else float(r["p"][k])), r["mcnemar"], holds,
            ])  # fmt: skip
        head = [
            "Dataset", f"{method} {name}", f"{baseline} {name}",
            *(f"Δ {n} [95% CI]" for n in metrics.names), f"p (bootstrap, {name})", "McNemar",
            "Holds",
        ]  # fmt: skip
        parts += [f"{'#' * level} {method} − {baseline}", summary_line(method, baseline, rows,
                                                                        metrics)]  # fmt: skip
        parts.append(md_table(head, body))
    together = " (base and novel together)" if len(metrics.subsamples) > 1 else ""
    note = (
        "Paired: both methods' scores on the same resampled test samples; seeds resampled per "
        f"method. p: the paired bootstrap's two-sided p for Δ {name}. McNemar: exact test on "
        f"the dataset's samples{together}, per seed both ran. Holds: the Δ {name} interval "
        "excludes 0. § resampled by seeds only (no per-sample outcomes)."
    )
    return "\n\n".join([note, *parts])


# The protocols `--baseline` compares: title, metrics, and the datasets an Average is over.
COMPARED = {
    "base2novel": ("Base-to-novel", B2N_METRICS),
    "xd": ("Cross-dataset transfer", ACCURACY),
    "dg": ("Domain generalisation", ACCURACY),
}


def baseline_comparisons(
    rows: Sequence[Row], outcomes: samples.Outcomes | None, baseline: str | None
) -> tuple[str, list[tuple[str, Metrics, dict[str, list[Row]]]]] | None:
    """Every method against `baseline` (paired) in each protocol of COMPARED where it ran:
    (baseline, [(title, metrics, paired_comparisons)]); None when no baseline is asked for."""
    if baseline is None:
        return None
    found = outcomes if outcomes is not None else samples.Outcomes({})
    sections = []
    for protocol, (title, metrics) in COMPARED.items():
        parts = samples.parts(rows, protocol, metrics.subsamples, found)
        if baseline not in parts or len(parts) < 2:
            continue
        targets = protocol_spec(protocol).targets
        averaged = (lambda c: c) if not targets else (lambda c, t=targets: [d for d in c if d in t])
        sections.append(
            (title, metrics, paired_comparisons(parts, baseline, metrics, None, averaged))
        )
    if not sections:
        have = sorted({r["method"] for r in rows if r.get("method")})
        raise ConfigError(
            f"baseline {baseline!r}: no base-to-novel, cross-dataset or domain generalisation "
            f"results of it and another method; methods: {', '.join(have) or 'none'}"
        )
    return baseline, sections


def comparisons_markdown(baseline: str, sections) -> str:
    return "\n\n".join(
        f"### {title}\n\n{comparison_markdown(baseline, tables, 4, metrics)}"
        for title, metrics, tables in sections
    )


# ---------------------------------------------------------------- ablations


def variant_comparisons(
    rows: Sequence[Row], outcomes: samples.Outcomes | None
) -> dict[str, tuple[str, dict[str, list[Row]]]]:
    """Per base-to-novel ablation in the rows whose YAML names a default variant
    (plan.ablations.default_variant): {ablation: (default, b2n_comparisons of every other
    variant against it)}."""
    from dplbench.plan.ablations import default_variant, load_ablation

    found = samples.Outcomes({}) if outcomes is None else outcomes
    names = {agg.params_of(r).get("ablation") for r in rows if r.get("protocol") == "base2novel"}
    out = {}
    for name in sorted(n for n in names if n):
        try:
            ab = load_ablation(name)
        except ConfigError:  # an ablation from a YAML path elsewhere: no spec to read
            continue
        default = default_variant(ab, "base2novel")
        mine = [r for r in rows if agg.params_of(r).get("ablation") == name]
        parts = samples.parts(mine, "base2novel", B2N, found, label="variant")
        if default is None or default not in parts:
            continue
        order = [v.name for v in ab.variants]
        out[name] = (default, b2n_comparisons(parts, default, order))
    return out


def variants_markdown(tables: Mapping[str, tuple[str, dict[str, list[Row]]]]) -> str:
    return "\n\n".join(
        f"### {name}: against `{default}`\n\n{comparison_markdown(default, table, 4)}"
        for name, (default, table) in tables.items()
    )


# ---------------------------------------------------------------- wide tables (xd, dg, few-shot)


def add_wide_intervals(
    table: list[Row], rows: Sequence[Row], outcomes: samples.Outcomes, protocol: str
) -> list[Row]:
    """Each wide row (one method, or method and shots for few-shot) with `ci_<dataset>` for
    every dataset column it has and `ci_average` over the datasets its Average covers: (low,
    high) of the accuracy's 95% interval, None where nothing can be resampled."""
    for r in table:
        mine = [x for x in rows if x.get("method") == r["method"]]
        if "shots" in r:
            mine = [x for x in mine if x.get("shots") == r["shots"]]
        parts = samples.parts(mine, protocol, ("all",), outcomes).get(r["method"], {})
        datasets = [d for d in parts if r.get(d) is not None]
        for d in datasets:
            iv = interval({d: parts[d]}, accuracy_combine([d]))
            r[f"ci_{d}"] = _ci(iv.low, iv.high, 0)
        averaged = [d for d in _averaged(r, protocol) if r.get(d) is not None]
        if averaged and all(d in parts for d in averaged):
            iv = interval({d: parts[d] for d in averaged}, accuracy_combine(averaged))
            r[f"ci_{AVERAGE}"] = _ci(iv.low, iv.high, 0)
    return table


def _averaged(row: Row, protocol: str) -> list[str]:
    """The datasets a wide row's Average is over: the targets (xd, dg) or every dataset."""
    spec = protocol_spec(protocol)
    return list(spec.targets) if spec.targets else list(spec.datasets)
