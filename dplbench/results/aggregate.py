"""Aggregation of result rows into the field's tables (docs/protocols.md §2), with published numbers.

Pure functions from table to table: the input is the results table (`results.ROW_SCHEMA`, as a
pyarrow Table or a list of dicts), every output is a list of flat dict rows. Nothing here reads
logs or renders; `dplbench.report` turns these tables into Markdown and plots.

The rule everywhere: per dataset, mean over seeds (std over seeds, ddof=1); across datasets, the
mean of those means; for base-to-novel, HM of the averaged base and novel, never the mean of HMs.
"""

from __future__ import annotations

import csv
import functools
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from dpl.methods import METHODS
from dplbench.data.datasets import BENCHMARKS, label

# Each protocol's datasets / source / targets / shots come from its canonical suite file.
from dplbench.plan.config import CONFIG_DIR
from dplbench.plan.suites import protocol_spec

Row = dict[str, Any]

# Our registry names -> the names used in the published tables.
PUBLISHED_NAME = {"zsclip": "clip"}
AVERAGE = "average"  # the dataset key of the cross-dataset "Average" row
REFERENCE_DIR = CONFIG_DIR / "reference"


class SeedStat(NamedTuple):
    mean: float | None
    std: float | None  # sample std over seeds (ddof=1); None for fewer than 2 seeds
    n: int  # seeds


# ---------------------------------------------------------------- input and small helpers


def as_rows(table: Any) -> list[Row]:
    """A pyarrow Table (or anything with `to_pylist`) or an iterable of dicts -> list of dicts."""
    if table is None:
        return []
    if hasattr(table, "to_pylist"):
        return table.to_pylist()
    return [dict(r) for r in table]


def harmonic_mean(values: Sequence[float | None]) -> float | None:
    """HM of the values (for base and novel: 2·B·N/(B+N), docs/protocols.md §2); None when any value is
    missing, 0 when any is 0."""
    if not values or any(v is None for v in values):
        return None
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def seed_stat(values: Sequence[float]) -> SeedStat:
    if not values:
        return SeedStat(None, None, 0)
    std = statistics.stdev(values) if len(values) > 1 else None
    return SeedStat(statistics.fmean(values), std, len(values))


def mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def accuracy(row: Row) -> float | None:
    """Percent accuracy; falls back to correct/total when the column is null."""
    if row.get("accuracy") is not None:
        return float(row["accuracy"])
    if row.get("correct") is not None and row.get("total"):
        return 100.0 * row["correct"] / row["total"]
    return None


def params_of(row: Row) -> dict[str, Any]:
    raw = row.get("params")
    if not raw:
        return {}
    return raw if isinstance(raw, dict) else dict(_parsed(raw))


@functools.lru_cache(maxsize=4096)
def _parsed(raw: str) -> dict[str, Any]:
    """A `params` column's JSON, parsed once: report tables ask of every row several times."""
    return json.loads(raw)


def is_sweep(row: Row) -> bool:
    """Rows of a sweep or ablation variant: kept out of the protocol tables, shown by `pivot`."""
    return bool(params_of(row)) or row.get("variant") is not None


def _order(items: Iterable[str], known: Sequence[str]) -> list[str]:
    rank = {k: i for i, k in enumerate(known)}
    return sorted(set(items), key=lambda k: (rank.get(k, len(rank)), k))


def display_name(dataset: str) -> str:
    """A dataset's name in reports (the papers' spelling); `Average` for the average row."""
    return "Average" if dataset == AVERAGE else label(dataset)


def datasets_in_order(datasets: Iterable[str]) -> list[str]:
    """In the dataset registry's order (docs/protocols.md §1)."""
    return _order(datasets, BENCHMARKS)


def methods_in_order(methods: Iterable[str]) -> list[str]:
    """In the method registry's order (chronological)."""
    return _order(methods, METHODS.in_order())


def _protocol_rows(rows: Iterable[Row], protocol: str | Sequence[str]) -> list[Row]:
    """Test-split rows of the protocol(s), sweep rows left out."""
    wanted = {protocol} if isinstance(protocol, str) else set(protocol)
    return [
        r
        for r in rows
        if r.get("protocol") in wanted
        and r.get("split") in (None, "test")
        and not is_sweep(r)
        and accuracy(r) is not None
    ]


def by_seed(rows: Iterable[Row]) -> SeedStat:
    """Mean/std over seeds. Duplicate rows of one seed (only when configs are mixed: `results`
    already keeps the latest run per job) are averaged first so no seed weighs more."""
    per_seed: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        per_seed[r.get("seed")].append(accuracy(r))
    return seed_stat([statistics.fmean(v) for v in per_seed.values()])


def group(rows: Iterable[Row], key: Callable[[Row], Any]) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return out


# ---------------------------------------------------------------- published numbers


def _cell(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def reference_tables(directory: str | Path | None = None) -> dict[str, list[Row]]:
    """Published tables from `configs/reference/*.csv`, keyed by file stem; numbers as floats,
    empty cells as None. A missing folder gives {} (reports then show ours only)."""
    folder = Path(directory) if directory is not None else REFERENCE_DIR
    tables = {}
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="") as f:
            tables[path.stem] = [{k: _cell(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return tables


def published_name(method: str) -> str:
    return PUBLISHED_NAME.get(method, method)


def hm_average(per_dataset: Sequence[Row]) -> Row:
    """The "Average" row rule (docs/protocols.md §2): mean of base and of novel over the datasets that have
    both, then HM of those averages. Used for our rows and to recompute published averages."""
    both = [r for r in per_dataset if r.get("base") is not None and r.get("novel") is not None]
    base = mean(r["base"] for r in both)
    novel = mean(r["novel"] for r in both)
    return {"base": base, "novel": novel, "hm": harmonic_mean([base, novel]), "datasets": len(both)}


def reference_average(reference: Sequence[Row], method: str) -> Row:
    """Recompute a method's published base-to-novel Average from its per-dataset reference rows."""
    rows = [r for r in reference if r["method"] == method and r["dataset"] != AVERAGE]
    return hm_average(rows)


def _refs(compare: bool, refs: Mapping[str, list[Row]] | None) -> Mapping[str, list[Row]]:
    if not compare:
        return {}
    return refs if refs is not None else reference_tables()


def _index(table: Iterable[Row], *keys: str) -> dict[tuple, Row]:
    return {tuple(r[k] for k in keys): r for r in table}


# ---------------------------------------------------------------- base-to-novel and long-tail


def b2n_dataset_row(rows: Sequence[Row]) -> Row:
    base = by_seed(r for r in rows if r.get("subsample") == "base")
    novel = by_seed(r for r in rows if r.get("subsample") == "novel")
    return {
        "base": base.mean, "base_std": base.std, "n_base": base.n,
        "novel": novel.mean, "novel_std": novel.std, "n_novel": novel.n,
        "hm": harmonic_mean([base.mean, novel.mean]),
    }  # fmt: skip


def _b2n_table(rows: Sequence[Row], expected: Sequence[str]) -> list[Row]:
    """Per (method, dataset) rows, then each method's Average row (HM of averages)."""
    by_method = group(rows, lambda r: r["method"])
    out = []
    for method in methods_in_order(by_method):
        by_ds = group(by_method[method], lambda r: r["dataset"])
        per_ds = [
            {"method": method, "dataset": ds, **b2n_dataset_row(by_ds[ds])}
            for ds in datasets_in_order(by_ds)
        ]
        complete = set(expected) <= {r["dataset"] for r in per_ds if r["hm"] is not None}
        out += [
            *per_ds,
            {"method": method, "dataset": AVERAGE, **hm_average(per_ds), "complete": complete},
        ]
    return out


def base2novel(
    rows: Any, compare: bool = False, refs: Mapping[str, list[Row]] | None = None
) -> list[Row]:
    """Base-to-novel: per (method, dataset) base/novel mean ± std over seeds and HM of the means;
    per method an `average` row (HM of the averaged base and novel). With `compare`, `pub_base`,
    `pub_novel`, `pub_hm` from configs/reference/base2novel.csv."""
    table = _b2n_table(
        _protocol_rows(as_rows(rows), "base2novel"), protocol_spec("base2novel").datasets
    )
    if compare:
        _attach_published(table, _refs(compare, refs).get("base2novel", []))
    return table


def _attach_published(table: list[Row], reference: Sequence[Row]) -> None:
    """Add `pub_base`, `pub_novel`, `pub_hm`. An incomplete Average of ours is compared with the
    published per-dataset rows of the same datasets averaged by the same rule (`pub_datasets`),
    not with the 11-dataset Average, which would compare different things."""
    ref = _index(reference, "method", "dataset")
    for r in table:
        name = published_name(r["method"])
        pub = ref.get((name, r["dataset"]), {})
        if r["dataset"] == AVERAGE and not r["complete"]:
            mine = [
                x["dataset"]
                for x in table
                if x["method"] == r["method"] and x["dataset"] != AVERAGE and x["hm"] is not None
            ]
            known = all((name, d) in ref for d in mine)
            pub = hm_average([ref[(name, d)] for d in mine]) if known and mine else {}
            r["pub_datasets"] = len(mine) if pub else None
        r.update({f"pub_{k}": pub.get(k) for k in ("base", "novel", "hm")})


def longtail(
    rows: Any, compare: bool = False, refs: Mapping[str, list[Row]] | None = None
) -> list[Row]:
    """Long-tail base-to-novel, as `base2novel`, one table per imbalance ratio (column
    `imbalance`); `pub_hm` from longtail_imb10_hm.csv for ratio 10 (no published base/novel)."""
    selected = _protocol_rows(as_rows(rows), "longtail")
    ref = _index(_refs(compare, refs).get("longtail_imb10_hm", []), "method", "dataset")
    out = []
    for ratio, rrows in sorted(
        group(selected, lambda r: r.get("imbalance")).items(), key=lambda kv: kv[0] or 0
    ):
        for r in _b2n_table(rrows, protocol_spec("longtail").datasets):
            r["imbalance"] = ratio
            if compare:
                pub = (
                    ref.get((published_name(r["method"]), r["dataset"]), {}) if ratio == 10 else {}
                )
                r["pub_hm"] = pub.get("hm")
            out.append(r)
    return out


# ---------------------------------------------------------------- cross-dataset and DG


def _source_target_table(rows: list[Row], protocol_name: str, ref: Sequence[Row]) -> list[Row]:
    """One wide row per method: source (ImageNet) and each target mean ± std over seeds, and the
    mean of the target means over the targets present (`complete` False if some are missing)."""
    own = _protocol_rows(rows, protocol_name)
    source = protocol_spec(protocol_name).source
    # The source accuracy belongs to the ImageNet-trained prompts shared by xd and dg; take it
    # from the sibling protocol when this one did not re-evaluate ImageNet.
    siblings = _protocol_rows(rows, ("xd", "dg"))
    pub = {r["method"]: r for r in ref}
    out = []
    for method in methods_in_order(r["method"] for r in own):
        mine = [r for r in own if r["method"] == method]
        src = [r for r in mine if r["dataset"] == source] or [
            r for r in siblings if r["method"] == method and r["dataset"] == source
        ]
        row: Row = {"method": method}
        targets = protocol_spec(protocol_name).targets
        for ds in (source, *targets):
            st = by_seed(src if ds == source else [r for r in mine if r["dataset"] == ds])
            row.update({ds: st.mean, f"{ds}_std": st.std, f"n_{ds}": st.n})
        present = [row[t] for t in targets if row[t] is not None]
        row.update(
            {
                AVERAGE: mean(present),
                "targets": len(present),
                "complete": len(present) == len(targets),
            }
        )
        if ref:
            p = pub.get(published_name(method), {})
            row.update({f"pub_{ds}": p.get(ds) for ds in (source, *targets)})
            row[f"pub_{AVERAGE}"] = p.get("target_average")
        out.append(row)
    return out


def cross_dataset(
    rows: Any, compare: bool = False, refs: Mapping[str, list[Row]] | None = None
) -> list[Row]:
    """Cross-dataset (xd): per method ImageNet and the 10 targets (mean over seeds), `average` =
    mean of the target means; `pub_*` from cross_dataset.csv."""
    ref = _refs(compare, refs).get("cross_dataset", []) if compare else []
    return _source_target_table(as_rows(rows), "xd", ref)


def domain_generalization(
    rows: Any, compare: bool = False, refs: Mapping[str, list[Row]] | None = None
) -> list[Row]:
    """Domain generalisation (dg): per method ImageNet and the 4 variants; `average` = mean of the
    variant means; `pub_*` from domain_generalization.csv."""
    ref = _refs(compare, refs).get("domain_generalization", []) if compare else []
    return _source_target_table(as_rows(rows), "dg", ref)


# ---------------------------------------------------------------- few-shot


def fewshot(
    rows: Any, compare: bool = False, refs: Mapping[str, list[Row]] | None = None
) -> list[Row]:
    """Few-shot: one wide row per (method, shots): each dataset's mean ± std over seeds and
    `average` over the datasets present (`complete` when all 11); `pub_average` from
    fewshot_average.csv."""
    selected = _protocol_rows(as_rows(rows), "fewshot")
    pub = {r["method"]: r for r in _refs(compare, refs).get("fewshot_average", [])}
    out = []
    groups = group(selected, lambda r: (r["method"], r.get("shots")))
    rank = {m: i for i, m in enumerate(methods_in_order(m for m, _ in groups))}
    for method, shots in sorted(groups, key=lambda k: (rank[k[0]], k[1] or 0)):
        by_ds = group(groups[(method, shots)], lambda r: r["dataset"])
        row: Row = {"method": method, "shots": shots}
        for ds in datasets_in_order(by_ds):
            st = by_seed(by_ds[ds])
            row.update({ds: st.mean, f"{ds}_std": st.std, f"n_{ds}": st.n})
        row[AVERAGE] = mean(row[ds] for ds in by_ds)
        row["datasets"] = len(by_ds)
        row["complete"] = set(protocol_spec("fewshot").datasets) <= set(by_ds)
        if compare:
            row[f"pub_{AVERAGE}"] = pub.get(published_name(method), {}).get(f"shots_{shots}")
        out.append(row)
    return out
