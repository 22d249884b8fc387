"""The summary a command prints after a run: per method, ablation variant or sweep setting,
dataset and shots, the mean over seeds of the jobs that ran (base, novel and HM for base-to-novel
jobs, as the live table shows them; else the accuracy of each evaluated set), with the HM's (or
accuracy's) 95% interval when there are 2+ seeds or per-sample outcomes (docs/results.md §4)."""

from __future__ import annotations

import json
from typing import Any

from dplbench.results import samples, store
from dplbench.results.aggregate import harmonic_mean
from dplbench.results.intervals import accuracy_combine, b2n_combine, interval
from dplbench.results.root import ResultsRoot


def as_text(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`summary_rows` as the console prints them: scores to two decimals, missing ones blank."""
    text = lambda v: "" if v is None else f"{v:.2f}" if isinstance(v, float) else v  # noqa: E731
    return [{k: text(v) for k, v in r.items()} for r in rows]


def study_label(params: dict[str, Any]) -> tuple[str, str] | None:
    """A row's ablation variant ("variant", name) or sweep setting ("setting", "lr=0.1 ...");
    None for a suite's own rows."""
    if "variant" in params:
        return ("variant", str(params["variant"]))
    setting = {k: v for k, v in params.items() if k not in ("sweep", "ablation")}
    if setting:
        return ("setting", " ".join(f"{k}={v}" for k, v in sorted(setting.items())))
    return None


def summary_rows(root: ResultsRoot, job_ids: list[str]) -> list[dict[str, Any]]:
    """Rows of (method, variant or setting, dataset, shots, seeds, base, novel, HM, accuracy):
    each score (a float, in %; None where a row has none) the mean over the seeds of one method,
    variant (or sweep setting), dataset and number of shots, never across them. Columns no row
    fills are left out; empty when none of the jobs has rows."""
    if not job_ids or not store.has_rows(root):
        return []
    rows = store.query(
        root,
        "SELECT job_id, method, dataset, subsample, shots, seed, params, accuracy FROM results "
        "WHERE list_contains($ids, job_id) AND split = 'test' "
        "ORDER BY dataset, method, list_position($ids, job_id)",
        {"ids": job_ids},
    ).to_pylist()
    cells: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        label = study_label(json.loads(r["params"] or "{}"))
        key = (r["dataset"], r["method"], label, r["shots"])
        cell = cells.setdefault(key, {"seeds": set(), "rows": []})
        cell["seeds"].add(r["seed"])
        cell["rows"].append(r)
        cell.setdefault(r["subsample"], []).append(r["accuracy"])
    outcomes = samples.load_outcomes(root, job_ids)
    kinds = {k[2][0] for k in cells if k[2] is not None}
    several_shots = len({k[3] for k in cells}) > 1
    table = []
    for (dataset, method, label, shots), c in cells.items():
        mean = {s: sum(c[s]) / len(c[s]) for s in ("base", "novel", "all") if s in c}
        hm = (
            harmonic_mean([mean["base"], mean["novel"]]) if {"base", "novel"} <= set(mean) else None
        )
        row = {"method": method}
        for kind in sorted(kinds, reverse=True):  # variant, then setting
            row[kind] = label[1] if label is not None and label[0] == kind else "–"
        row["dataset"] = dataset
        if several_shots:
            row["shots"] = "–" if shots is None else str(shots)
        row.update(
            seeds=len(c["seeds"]),
            base=mean.get("base"),
            novel=mean.get("novel"),
            HM=hm,
            **{"HM 95% CI": _ci(c["rows"], dataset, ("base", "novel"), outcomes)},
            accuracy=mean.get("all"),
            **{"accuracy 95% CI": _ci(c["rows"], dataset, ("all",), outcomes)},
        )
        table.append(row)
    scores = ("base", "novel", "HM", "HM 95% CI", "accuracy", "accuracy 95% CI")
    empty = [k for k in scores if all(r[k] is None for r in table)]
    return [{k: v for k, v in r.items() if k not in empty} for r in table]


def _ci(rows, dataset: str, subsamples: tuple[str, ...], outcomes) -> str | None:
    """The 95% interval of the cell's HM (base and novel) or accuracy (`all`), as "[lo, hi]",
    when there is something to resample (2+ seeds, or per-sample outcomes; docs/results.md §4)."""
    part = samples.part([r for r in rows if r["subsample"] in subsamples], subsamples, outcomes)
    if part is None:
        return None
    combine = b2n_combine([dataset]) if len(subsamples) == 2 else accuracy_combine([dataset])
    iv = interval({dataset: part}, combine)
    if iv.low is None:
        return None
    return f"[{iv.low[-1]:.2f}, {iv.high[-1]:.2f}]"
