"""The report's per-sample data (#29): the outcomes of the latest run of every job
(`outcomes` joined to `results`, results/store.py) and, from them and the result rows, each
method's `intervals.Part` per dataset: its seeds' accuracies and, where every seed has them,
their per-sample outcomes aligned on one sample index per (dataset, subsample)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from dplbench.results import aggregate as agg
from dplbench.results.aggregate import Row
from dplbench.results.intervals import Part
from dplbench.results.root import ResultsRoot

# Each sample's index: its rank among the keys of its (dataset, subsample) over the whole root,
# so that every job's outcomes on that split line up (a skipped sample leaves a gap, not a shift).
OUTCOMES_SQL = """
SELECT job_id, dataset, subsample,
       list(i ORDER BY i) AS idx, list(correct ORDER BY i) AS correct
FROM (
    SELECT o.job_id, o.dataset, o.subsample, o.correct,
           dense_rank() OVER (PARTITION BY o.dataset, o.subsample ORDER BY o.key) - 1 AS i
    FROM outcomes o JOIN results r USING (job_id, run_id, dataset, subsample, split)
    WHERE o.split = 'test' {jobs}
)
GROUP BY ALL ORDER BY job_id, dataset, subsample
"""


@dataclass(frozen=True)
class Outcomes:
    """Per (job_id, dataset, subsample) the job's outcomes as a row over that split's samples:
    1.0 right, 0.0 wrong, NaN where the job did not score the sample."""

    rows: dict[tuple[str, str, str], np.ndarray]

    def get(self, job_id: str, dataset: str, subsample: str) -> np.ndarray | None:
        return self.rows.get((job_id, dataset, subsample))


def load_outcomes(root: ResultsRoot, job_ids: Sequence[str] | None = None) -> Outcomes:
    """The latest runs' outcomes under `root`, of every job or of `job_ids` (none for roots
    written before #29)."""
    from dplbench.results import store

    if not store.has_rows(root, "outcomes"):
        return Outcomes({})
    jobs = "" if job_ids is None else "AND list_contains($ids, o.job_id)"
    params = None if job_ids is None else {"ids": list(job_ids)}
    table = store.query(root, OUTCOMES_SQL.format(jobs=jobs), params).combine_chunks()
    if not table.num_rows:
        return Outcomes({})
    idx_col, ok_col = table.column("idx").chunk(0), table.column("correct").chunk(0)
    idx_all, ok_all = idx_col.values.to_numpy(), ok_col.values.to_numpy()
    offsets = idx_col.offsets.to_numpy()
    keys = list(zip(*(table.column(c).to_pylist() for c in ("job_id", "dataset", "subsample"))))
    size: dict[tuple[str, str], int] = defaultdict(int)  # samples per (dataset, subsample)
    for k, lo, hi in zip(keys, offsets[:-1], offsets[1:]):
        if hi > lo:
            size[k[1:]] = max(size[k[1:]], int(idx_all[hi - 1]) + 1)
    rows = {}
    for k, lo, hi in zip(keys, offsets[:-1], offsets[1:]):
        row = np.full(size[k[1:]], np.nan)
        row[idx_all[lo:hi]] = ok_all[lo:hi]
        rows[k] = row
    return Outcomes(rows)


def test_rows(rows: Iterable[Row], protocol: str, studies: bool = False) -> list[Row]:
    """The protocol's test rows as its table aggregates them (sweep and ablation rows left out,
    unless `studies`)."""
    return [
        r
        for r in rows
        if r.get("protocol") == protocol
        and r.get("split") in (None, "test")
        and (studies or not agg.is_sweep(r))
        and agg.accuracy(r) is not None
    ]


def part(rows: Sequence[Row], subsamples: Sequence[str], outcomes: Outcomes) -> Part | None:
    """One method on one dataset: the seeds that have a row for every subsample; per subsample
    their accuracies (duplicates of a seed averaged, as aggregate.by_seed) and, when every one
    of those seeds has outcomes, the [S, N] matrix of them."""
    by_seed = agg.group(rows, lambda r: r.get("seed"))
    seeds = sorted(
        s for s, rs in by_seed.items() if set(subsamples) <= {r.get("subsample") for r in rs}
    )
    if not seeds:
        return None
    accuracies, matrices = {}, {}
    for sub in subsamples:
        mine = [[r for r in by_seed[s] if r.get("subsample") == sub] for s in seeds]
        accuracies[sub] = np.array([np.mean([agg.accuracy(r) for r in rs]) for rs in mine])
        # A seed's outcomes: its first job's (sorted by id) when a seed has several rows.
        found = [outcomes.get(min(r["job_id"] for r in rs), rs[0]["dataset"], sub) for rs in mine]
        if all(f is not None for f in found) and len({len(f) for f in found}) == 1:
            matrices[sub] = np.stack(found)
    return Part(accuracies, matrices, tuple(seeds))


def parts(
    rows: Iterable[Row],
    protocol: str,
    subsamples: Sequence[str],
    outcomes: Outcomes,
    label: str = "method",
) -> dict[str, dict[str, Part]]:
    """{method: {dataset: Part}} of a protocol's test rows; `label="variant"`: of an
    ablation's rows, {variant: {dataset: Part}}."""
    out: dict[str, dict[str, Part]] = {}
    studies = label != "method"
    by_cell = agg.group(
        test_rows(rows, protocol, studies), lambda r: (_label(r, label), r["dataset"])
    )
    for (method, dataset), rs in by_cell.items():
        p = part(rs, subsamples, outcomes)
        if p is not None:
            out.setdefault(method, {})[dataset] = p
    return out


def _label(row: Row, label: str):
    return row[label] if label == "method" else agg.params_of(row).get(label)
