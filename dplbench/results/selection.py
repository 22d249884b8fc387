"""Selection honesty: how much picking the best epoch on test data inflates a number.

Jobs run with `--eval-every-epoch` record each epoch's test accuracy in the `epochs` table
(`test_base`, `test_novel`, or `test_all`). Per method and dataset, the mean over seeds of the
last epoch's score (what dplbench reports, as the field does) beside that of the best epoch chosen
on the test split itself (what the DPL release reports), and the gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dplbench.results import aggregate as agg
from dplbench.results.aggregate import AVERAGE, Row


def _score(row: Row) -> float | None:
    """HM of the epoch's base and novel test accuracy, or its all-class accuracy."""
    if row.get("test_base") is not None and row.get("test_novel") is not None:
        return agg.harmonic_mean([row["test_base"], row["test_novel"]])
    return row.get("test_all")


def selection_gap(epochs: Iterable[Row], results: Iterable[Row]) -> list[Row]:
    """One row per (method, dataset) with per-epoch test scores, then each method's Average:
    `last` (mean over seeds of the last epoch's score), `best` (of the best epoch's), `gap`,
    `metric` ("HM" or "accuracy")."""
    where = {r["job_id"]: (r["method"], r["train_dataset"]) for r in results}
    by_job: dict[str, list[Row]] = agg.group(
        (e for e in epochs if _score(e) is not None and e["job_id"] in where),
        lambda e: e["job_id"],
    )
    per_cell: dict[tuple[str, str], list[tuple[float, float]]] = {}
    metric: dict[tuple[str, str], str] = {}
    for job_id, rows in by_job.items():
        rows = sorted(rows, key=lambda e: e["epoch"])
        scores = [_score(e) for e in rows]
        key = where[job_id]
        per_cell.setdefault(key, []).append((scores[-1], max(scores)))
        metric[key] = "HM" if rows[-1].get("test_base") is not None else "accuracy"
    out: list[Row] = []
    for method in agg.methods_in_order({m for m, _ in per_cell}):
        cells = []
        for ds in agg.datasets_in_order({d for m, d in per_cell if m == method}):
            pairs = per_cell[(method, ds)]
            last = agg.mean(p[0] for p in pairs)
            best = agg.mean(p[1] for p in pairs)
            cells.append({"method": method, "dataset": ds, "last": last, "best": best,
                          "gap": best - last, "seeds": len(pairs),
                          "metric": metric[(method, ds)]})  # fmt: skip
        out += cells
        if len(cells) > 1:
            last = agg.mean(c["last"] for c in cells)
            best = agg.mean(c["best"] for c in cells)
            out.append({"method": method, "dataset": AVERAGE, "last": last, "best": best,
                        "gap": best - last, "seeds": None, "metric": cells[0]["metric"]})  # fmt: skip
    return out


def selection_markdown(table: Sequence[Row]) -> str:
    from dplbench.results.markdown import fmt, md_table

    body = [
        [r["method"], agg.display_name(r["dataset"]), r["metric"], fmt(r["last"]), fmt(r["best"]),
         f"{r['gap']:+.2f}", "" if r["seeds"] is None else str(r["seeds"])]
        for r in table
    ]  # fmt: skip
    note = (
        "Last epoch (what this report's tables use) against the best epoch picked on the test "
        "split itself (what the DPL release reports), mean over seeds. The gap is what "
        "selecting on test data adds; runs with `--eval-every-epoch` only."
    )
    head = ["Method", "Dataset", "Metric", "Last epoch", "Best epoch on test", "Gap", "Seeds"]
    return note + "\n\n" + md_table(head, body)
