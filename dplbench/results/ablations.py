"""Ablation and sweep tables from the result rows: one `pivot` row per variant or setting.

`dplbench ablate` prints `ablation_markdown` and writes it to R/reports/ablations/NAME-SUITE.md;
`dplbench report` shows them in its "Ablations" and "Sweeps" sections (`ablation_tables`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dplbench import storage
from dplbench.plan.ablations import Ablation
from dplbench.results import aggregate as agg
from dplbench.results import store
from dplbench.results.aggregate import Row
from dplbench.results.markdown import fmt, md_table
from dplbench.results.root import ResultsRoot


def field(row: Row, name: str) -> Any:
    """A column, or a sweep parameter from the `params` JSON (`lr` or `params.lr`)."""
    if name in row and name != "params":
        return row[name]
    value = agg.params_of(row).get(name.removeprefix("params."))
    # Lists/dicts as JSON so that they can key a group.
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def _sort_key(values: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, int | float) else (1, 0, str(v)) for v in values)


def pivot(rows: Any, by: Sequence[str], value: str = "accuracy") -> list[Row]:
    """One row per distinct value of the `by` columns (columns or `params` keys): mean over seeds
    per dataset, then the mean over datasets (unless `dataset` is in `by`). Base/novel rows give
    `base`, `novel` and `hm` (HM of the averages, docs/protocols.md §2); other rows give `value`, with
    `<value>_std` over seeds when one dataset is averaged. Sweep rows are included."""
    selected = [r for r in agg.as_rows(rows) if r.get("split") in (None, "test")]
    if value != "accuracy":  # `_by_seed` reads accuracy(); point it at the requested column
        selected = [{**r, "accuracy": r.get(value), "correct": None} for r in selected]
    selected = [r for r in selected if agg.accuracy(r) is not None]
    groups = agg.group(selected, lambda r: tuple(field(r, k) for k in by))
    out = []
    for key in sorted(groups, key=_sort_key):
        by_ds = agg.group(groups[key], lambda r: r.get("dataset"))
        row: Row = {**dict(zip(by, key)), "datasets": len(by_ds)}
        if any(r.get("subsample") in ("base", "novel") for r in groups[key]):
            per_ds = [agg.b2n_dataset_row(g) for g in by_ds.values()]
            row.update(per_ds[0] if len(per_ds) == 1 else agg.hm_average(per_ds))
        else:
            stats = [agg.by_seed(g) for g in by_ds.values()]
            row[value] = agg.mean(s.mean for s in stats)
            row[f"{value}_std"] = stats[0].std if len(stats) == 1 else None
            row["seeds"] = max(s.n for s in stats)
        out.append(row)
    return out


def study_of(row: Row) -> tuple[str, str] | None:
    """("ablation", name) or ("sweep", name) of a row from an ablation variant or a sweep
    setting (its `params`); None for a suite's own rows."""
    params = agg.params_of(row)
    if {"ablation", "variant"} & set(params) or row.get("variant") or row.get("ablation"):
        return ("ablation", params.get("ablation") or row.get("ablation") or row.get("suite") or "")
    if params:
        return ("sweep", params.get("sweep") or row.get("suite") or "")
    return None


def ablation_tables(rows: Any) -> dict[tuple[str, str, str], list[Row]]:
    """Ablation and sweep rows -> one `pivot` table per (kind, name, protocol), kind "ablation" or
    "sweep": one row per variant (ablations) or per setting of the swept parameters (sweeps), per
    method when several; each averages over seeds within its variant or setting only."""
    labelled = [(study_of(r), r) for r in agg.as_rows(rows)]
    tables = {}
    for (kind, name, protocol), grp in sorted(
        agg.group(
            [r for study, r in labelled if study is not None],
            lambda r: (*study_of(r), r.get("protocol") or ""),
        ).items()
    ):
        if kind == "ablation":
            by = ["variant"]
        else:
            by = sorted({k for r in grp for k in agg.params_of(r)} - {"sweep"})
        if len({r.get("method") for r in grp}) > 1:
            by = ["method", *by]
        tables[(kind, name, protocol)] = pivot(grp, by)
    return tables


def ablation_rows(
    root: ResultsRoot, ablation: str, suite: str | None = None
) -> list[dict[str, Any]]:
    """The ablation's rows: newest run per (job, variant, evaluated split), `ablation` and
    `variant` lifted from params into columns (what `ablation_tables` groups by). All runs are
    read, not the `results` view: a plain `dplbench run` of the same work (same job id) must not
    hide a variant's row."""
    if not store.has_rows(root):
        return []
    labelled = (
        "(SELECT *, json_extract_string(params, '$.ablation') AS ablation, "
        "json_extract_string(params, '$.variant') AS variant FROM rows "
        "WHERE json_extract_string(params, '$.ablation') = $ablation "
        "AND ($suite IS NULL OR suite = $suite))"
    )
    keys = ("job_id", "variant", "dataset", "subsample", "split")
    sql = store.latest_sql(labelled, keys) + " ORDER BY created_at"
    return store.query(root, sql, {"ablation": ablation, "suite": suite}).to_pylist()


def ablation_table(ab: Ablation, root: ResultsRoot, suite: str | None = None) -> list[Row]:
    """Pivot rows with a `protocol` column, in the YAML's variant order."""
    order = {v.name: i for i, v in enumerate(ab.variants)}
    out = []
    for (_, _, protocol), table in ablation_tables(ablation_rows(root, ab.name, suite)).items():
        table = sorted(table, key=lambda r: (order.get(r.get("variant"), len(order)),))
        out += [{"protocol": protocol, **r} for r in table]
    return out


_VALUE_KEYS = {
    "base", "novel", "hm", "base_std", "novel_std", "n_base", "n_novel", "datasets", "seeds",
    "accuracy", "accuracy_std", "protocol",
}  # fmt: skip


def pivot_markdown(table: Sequence[Row]) -> str:
    """One pivot table: its key columns, then Base/Novel/HM (or Accuracy) and Datasets."""
    keys = [k for k in table[0] if k not in _VALUE_KEYS]
    if "hm" in table[0]:
        head, cols = ["Base", "Novel", "HM"], ["base", "novel", "hm"]
    else:
        head, cols = ["Accuracy"], ["accuracy"]
    body = [
        ["–" if r.get(k) is None else str(r.get(k)) for k in keys]
        + [fmt(r.get(c), r.get(f"{c}_std")) for c in cols]
        + [str(r.get("datasets", ""))]
        for r in table
    ]
    return md_table([*keys, *head, "Datasets"], body)


def ablation_markdown(ab: Ablation, table: list[Row], suite: str | None = None) -> str:
    """One Markdown table per protocol: variant (method), Base/Novel/HM or Accuracy, datasets."""
    title = f"## Ablation `{ab.name}`" + (f" (suite {suite})" if suite else "")
    parts = [title, ab.description] if ab.description else [title]
    if not table:
        return "\n\n".join([*parts, "No rows yet for this ablation."]) + "\n"
    for protocol in dict.fromkeys(r["protocol"] for r in table):
        parts += [
            f"### {protocol}",
            pivot_markdown([r for r in table if r["protocol"] == protocol]),
        ]
    return "\n\n".join(parts) + "\n"


def write_markdown(text: str, root: ResultsRoot, name: str) -> str:
    """R/reports/ablations/NAME.md, published whole."""
    return storage.write(root.ablation_report(name), text)
