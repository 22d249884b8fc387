"""The summary a command prints after a run: per method and dataset, the mean over seeds of the
jobs that ran (base, novel and HM for base-to-novel jobs, as the live table shows them; else the
accuracy of each evaluated set)."""

from __future__ import annotations

from typing import Any

from dplbench.results import store
from dplbench.results.aggregate import harmonic_mean
from dplbench.results.root import ResultsRoot


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def summary_rows(root: ResultsRoot, job_ids: list[str]) -> list[dict[str, Any]]:
    """Rows of (method, dataset, seeds, base, novel, HM, accuracy), as text, with the columns no
    row fills left out; empty when none of the jobs has rows."""
    if not job_ids or not store.has_rows(root):
        return []
    rows = store.query(
        root,
        "SELECT method, dataset, subsample, count(*) AS seeds, avg(accuracy) AS accuracy "
        "FROM results WHERE list_contains($ids, job_id) GROUP BY ALL "
        "ORDER BY dataset, method, subsample",
        {"ids": job_ids},
    ).to_pylist()
    cells: dict[tuple[str, str], dict] = {}
    for r in rows:
        cell = cells.setdefault((r["dataset"], r["method"]), {"seeds": r["seeds"]})
        cell[r["subsample"]] = r["accuracy"]
    table = []
    for (dataset, method), c in cells.items():
        hm = harmonic_mean([c["base"], c["novel"]]) if {"base", "novel"} <= set(c) else None
        table.append(
            {
                "method": method,
                "dataset": dataset,
                "seeds": c["seeds"],
                "base": _num(c.get("base")),
                "novel": _num(c.get("novel")),
                "HM": _num(hm),
                "accuracy": _num(c.get("all")),
            }  # fmt: skip
        )
    keep = [k for k in ("base", "novel", "HM", "accuracy") if any(r[k] for r in table)]
    return [{k: r[k] for k in ("method", "dataset", "seeds", *keep)} for r in table]
