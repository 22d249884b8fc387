"""The results store: one flat, hive-partitioned Parquet dataset; DuckDB over it.

Layout under the results root R:

    R/rows/suite=<suite>/method=<method>/<job_id>-<run_id>.parquet     one row per evaluated split
    R/epochs/suite=<suite>/method=<method>/<job_id>-<run_id>.parquet   per-epoch training metrics
    R/checkpoints/<job_id>/...                                          trainable state

Every file is written once under a temporary name and renamed into place, and its name carries the
job and run ids, so no write can overwrite or lose another job's rows. Reruns of a job add a new
run's file; readers take the newest run (`latest_sql`, the one "newest run wins" rule).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dplbench import storage
from dplbench.errors import ConfigError
from dplbench.results import catalog
from dplbench.results.root import ResultsRoot

# One row per (job, evaluated split). Partition columns (suite, method) live in the path.
ROW_SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),  # hash of the job's resolved work (plan.jobs.Job.id)
        ("run_id", pa.string()),  # one execution of the job
        ("suite", pa.string()),
        ("protocol", pa.string()),  # base2novel | fewshot | xd | dg | longtail
        ("method", pa.string()),
        ("dataset", pa.string()),  # the evaluated dataset
        ("train_dataset", pa.string()),  # where the prompts were trained (xd/dg: imagenet)
        ("subsample", pa.string()),  # all | base | novel (classes evaluated)
        ("split", pa.string()),  # test | val
        ("shots", pa.int32()),
        ("seed", pa.int32()),
        ("imbalance", pa.float64()),  # long-tail ratio, null otherwise
        ("accuracy", pa.float64()),  # percent, micro: 100·correct/total
        ("correct", pa.int64()),
        ("total", pa.int64()),
        ("skipped", pa.int64()),  # corrupt samples left out of `total` (on_data_error=skip)
        ("epochs", pa.int32()),  # epochs trained (0 for zsclip)
        ("source_job_id", pa.string()),  # the training job whose checkpoint was evaluated
        ("config", pa.string()),  # the full resolved job, JSON
        ("params", pa.string()),  # sweep / ablation labels of this job (JSON object; {} otherwise)
        # The other jobs trained with it in one fused group (comma list; empty: trained alone).
        ("fused_with", pa.string()),
        ("code_version", pa.string()),  # git commit (+dirty) or package version
        ("versions", pa.string()),  # JSON: python, torch, open_clip, ray, dplbench
        ("hardware", pa.string()),  # e.g. "2x NVIDIA H200" or "1x cpu (2 cores, x86_64)"
        ("node", pa.string()),  # where rank 0 ran: Ray node id, or the host name without Ray
        ("num_workers", pa.int32()),
        ("train_seconds", pa.float64()),
        ("eval_seconds", pa.float64()),
        ("wall_seconds", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

EPOCH_SCHEMA_FIXED = pa.schema(
    [
        ("job_id", pa.string()),
        ("run_id", pa.string()),
        ("epoch", pa.int32()),
        ("lr", pa.float64()),  # first param group's lr at the epoch's last optimiser step
        ("loss", pa.float64()),  # total; the named terms follow as loss_<term> columns
        ("samples", pa.int64()),
        ("seconds", pa.float64()),
        ("val_accuracy", pa.float64()),  # null when the job has no validation split
        ("run_status", pa.string()),  # done | failed | stopped: how the run that trained it ended
    ]
)
STATUS_SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("run_id", pa.string()),
        ("method", pa.string()),
        ("protocol", pa.string()),
        ("dataset", pa.string()),  # where the job trains (evaluation jobs: what they evaluate)
        ("seed", pa.int32()),
        ("status", pa.string()),  # queued | running | done | failed | stopped
        ("attempts", pa.int32()),  # worker-group starts (restarts after a worker died count)
        ("error", pa.string()),  # one line: what failed, where, how to fix it
        ("log", pa.string()),  # the full traceback
        ("node", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("ended_at", pa.timestamp("us", tz="UTC")),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
# One row per (job run, evaluated split, test sample): which samples it got right (#29;
# docs/results.md §1). Read with the job's `rows` row by (job_id, run_id, dataset, subsample,
# split). Partitioned like `rows`. Small ints compress to a few bytes per sample.
OUTCOME_SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("run_id", pa.string()),
        ("dataset", pa.string()),
        ("subsample", pa.string()),
        ("split", pa.string()),
        ("seed", pa.int32()),
        ("key", pa.string()),  # the sample's key in the dataset's shards: the same for every job
        ("label", pa.int16()),  # view class index (the subsample's classes)
        ("pred", pa.int16()),  # predicted view class index
        # 1 when pred == label (int8, not bool: `_view`'s empty-table types have no boolean)
        ("correct", pa.int8()),
    ]
)
PARTITIONS = ("suite", "method")  # in the path only (hive style), not inside the files
FILE_SCHEMA = pa.schema([f for f in ROW_SCHEMA if f.name not in PARTITIONS])
# The "newest run wins" keys of each table.
LATEST_KEYS = ("job_id", "dataset", "subsample", "split")


def result_row(**values: Any) -> dict[str, Any]:
    """One `rows` row, checked against the schema: a missing or misspelled column is an error."""
    names = set(ROW_SCHEMA.names)
    unknown, missing = sorted(set(values) - names), sorted(names - set(values))
    if unknown or missing:
        raise ValueError(f"result row: unknown columns {unknown}, missing columns {missing}")
    return {name: values[name] for name in ROW_SCHEMA.names}


def write_parquet(table: pa.Table, path: str | os.PathLike) -> str:
    """One Parquet file, published whole (dplbench/storage.py)."""
    return storage.write(path, lambda tmp: pq.write_table(table, tmp))


def write_rows(root: ResultsRoot, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write one job run's result rows (all rows share job_id, run_id, suite, method)."""
    if not rows:
        raise ValueError("no result rows to write")
    first = rows[0]
    ident = ("job_id", "run_id", "suite", "method")
    if any(tuple(r[k] for k in ident) != tuple(first[k] for k in ident) for r in rows):
        raise ValueError("one write holds the rows of one job run")
    table = pa.Table.from_pylist(
        [{k: result_row(**r)[k] for k in FILE_SCHEMA.names} for r in rows], schema=FILE_SCHEMA
    )
    path = root.table_file(
        "rows", first["suite"], first["method"], first["job_id"], first["run_id"]
    )
    return write_parquet(table, path)


def write_outcomes(
    root: ResultsRoot,
    suite: str,
    method: str,
    job_id: str,
    run_id: str,
    splits: Sequence[Mapping[str, Any]],
) -> str | None:
    """One job run's per-sample outcomes, every evaluated split in one file (`splits`: per split
    its dataset, subsample, split, seed and key / label / pred sequences of equal length)."""
    splits = [s for s in splits if len(s["key"])]
    if not splits:
        return None
    columns: dict[str, list] = {name: [] for name in OUTCOME_SCHEMA.names}
    for s in splits:
        n = len(s["key"])
        for name in ("dataset", "subsample", "split", "seed"):
            columns[name].append(pa.repeat(s[name], n).cast(OUTCOME_SCHEMA.field(name).type))
        columns["job_id"].append(pa.repeat(job_id, n))
        columns["run_id"].append(pa.repeat(run_id, n))
        columns["key"].append(pa.array(list(s["key"]), pa.string()))
        label, pred = pa.array(s["label"], pa.int16()), pa.array(s["pred"], pa.int16())
        columns["label"].append(label)
        columns["pred"].append(pred)
        columns["correct"].append(pc.equal(label, pred).cast(pa.int8()))
    table = pa.Table.from_arrays(
        [pa.concat_arrays(columns[n]) for n in OUTCOME_SCHEMA.names], schema=OUTCOME_SCHEMA
    )
    return write_parquet(table, root.table_file("outcomes", suite, method, job_id, run_id))


def write_epochs(
    root: ResultsRoot, suite: str, method: str, rows: Sequence[Mapping[str, Any]]
) -> Path | None:
    """Per-epoch training metrics of one job run; loss terms become loss_<term> columns, and
    per-epoch test accuracies (eval_every_epoch) test_<subsample> columns."""
    if not rows:
        return None
    fixed = set(EPOCH_SCHEMA_FIXED.names)
    extra = sorted({k for r in rows for k in r} - fixed)
    bad = [k for k in extra if not k.startswith(("loss_", "test_"))]
    if bad:
        raise ValueError(f"epoch row: unknown columns {bad}")
    schema = pa.schema(list(EPOCH_SCHEMA_FIXED) + [(k, pa.float64()) for k in extra])
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    path = root.table_file("epochs", suite, method, rows[0]["job_id"], rows[0]["run_id"])
    return write_parquet(table, path)


def keep_epochs(
    root: ResultsRoot, suite: str, method: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Epoch rows of one job's earlier runs (what a checkpoint carries), each run's written as
    that run's file, marked stopped, where the run wrote none (it was stopped before it could);
    a run's own file is left alone, so every epoch appears once."""
    for run_id in dict.fromkeys(r["run_id"] for r in rows):
        mine = [{**r, "run_status": "stopped"} for r in rows if r["run_id"] == run_id]
        path = root.table_file("epochs", suite, method, mine[0]["job_id"], run_id)
        if not catalog.published(path):  # there, or held by a compaction (results/catalog.py)
            write_epochs(root, suite, method, mine)


def parquet_relation(con, folder: str, name: str, hive: bool = True) -> str | None:
    """A SQL source over the Parquet files under `folder` that a reader reads
    (results/catalog.py), their schema read from the files; None when there are none."""
    files = catalog.list_table(folder)
    return catalog.relation(con, files, name, pa.schema([]), hive) if files else None


def latest_sql(source: str, keys: Sequence[str], order: str = "created_at") -> str:
    """The newest record (by `order`) of each `keys` group of `source` (a table, view or
    subquery): the one "newest run wins" rule of the results, sweep trials and ablations."""
    return (
        f"SELECT * EXCLUDE (_rn) FROM (SELECT *, row_number() OVER (PARTITION BY "
        f"{', '.join(keys)} ORDER BY {order} DESC) AS _rn FROM {source}) WHERE _rn = 1"
    )


def has_rows(root: ResultsRoot, table: str = "rows") -> bool:
    """Whether `table` has any file (one listing; nothing is read)."""
    return bool(storage.listdir(root.table(table), "*.parquet", recursive=True))


def suites_with(root: ResultsRoot, tables: Sequence[str] = ("rows",)) -> list[str]:
    """The suites that have files in `tables` (their partition folders: no file is read)."""
    names = {n for t in tables for n in storage.subdirs(root.table(t)) if n.startswith("suite=")}
    return sorted(n.split("=", 1)[1] for n in names)


def require_results(
    root: ResultsRoot, suite: str | None = None, tables: Sequence[str] = ("rows",)
) -> None:
    """Readers never answer an empty success: one line naming the root, or the suite and the
    suites that have results, when there is nothing to read."""
    have = suites_with(root, tables)
    if not have:
        try:
            there = storage.exists(root.path)
        except OSError:  # a bucket that does not exist, or one this machine may not read
            there = False
        where = "" if there else " (it does not exist)"
        raise ConfigError(f"no results under {root}{where}; give the --results root a run wrote to")
    if suite is not None and suite not in have:
        raise ConfigError(
            f"no results for suite {suite!r} under {root}; suites with results: {', '.join(have)}"
        )


# table -> (its files' schema, its hive partition columns)
TABLES = {
    "rows": (FILE_SCHEMA, PARTITIONS),
    "epochs": (EPOCH_SCHEMA_FIXED, PARTITIONS),
    "status": (STATUS_SCHEMA, ("suite",)),
    "outcomes": (OUTCOME_SCHEMA, PARTITIONS),
}
# view -> the table it reads
VIEWS = {"rows": "rows", "results": "rows", "epochs": "epochs", "status_all": "status",
         "status": "status", "outcomes": "outcomes"}  # fmt: skip


def connect(root: ResultsRoot, views: Sequence[str] | None = None):
    """A DuckDB connection with views `rows` (every run), `results` (latest run per job and
    split), `epochs` (every run's per-epoch metrics), `status` (each job's newest state,
    results/status.py) and `outcomes` (per-sample outcomes, every run); `views`: only these (and
    what they read), each table listed once."""
    import duckdb

    con = duckdb.connect()
    tables = dict.fromkeys(VIEWS[v] for v in (VIEWS if views is None else views))
    for table in tables:
        _view(con, root, table, "status_all" if table == "status" else table)
    if "rows" in tables:
        con.sql(f"CREATE VIEW results AS {latest_sql('rows', LATEST_KEYS)}")
    if "status" in tables:
        con.sql(f"CREATE VIEW status AS {latest_sql('status_all', ('job_id',), 'updated_at')}")
    return con


def _view(con, root, table: str, name: str) -> None:
    """View `name` over what a reader reads of R/<table> (results/catalog.py), or an empty one
    with the schema and the partition columns, so that queries still bind before anything was
    written."""
    schema, partitions = TABLES[table]
    files = catalog.list_table(root.table(table))
    if files:
        source = catalog.relation(con, files, f"_{table}_files", schema)
        con.sql(f"CREATE VIEW {name} AS SELECT * FROM {source}")
    else:
        cols = [f"NULL::{_duck(f.type)} AS {f.name}" for f in schema]
        cols += [f"NULL::VARCHAR AS {p}" for p in partitions]
        con.sql(f"CREATE VIEW {name} AS SELECT {', '.join(cols)} WHERE false")


def _duck(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    return "TIMESTAMP"


def views_in(sql: str) -> list[str]:
    """The views a query names (a word of its text): only their tables are listed and read."""
    words = set(re.findall(r"[a-z_]+", sql.lower()))
    return [v for v in VIEWS if v in words]


def query(root: ResultsRoot, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run SQL over the views of `connect`; values go in as `$name` parameters, never as text.
    A file listed and then removed before it was read (a compaction finishing meanwhile removed
    what its manifest holds) fails the read: then the tables are listed again, twice at most."""
    import duckdb

    for attempt in range(READ_ATTEMPTS):
        con = None
        try:
            con = connect(root, views_in(sql))
            return con.sql(sql, params=dict(params) if params else None).to_arrow_table()
        except (duckdb.IOException, OSError):
            if attempt == READ_ATTEMPTS - 1:
                raise
        finally:  # its datasets hold object-store clients, which must go before Python exits
            if con is not None:
                con.close()
    raise AssertionError("unreachable")


READ_ATTEMPTS = 3


def latest_rows(root: ResultsRoot) -> pa.Table:
    return query(root, "SELECT * FROM results")
