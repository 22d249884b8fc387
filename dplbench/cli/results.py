"""`dplbench results ls | query | show`: DuckDB over the results."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from dplbench.cli.common import Results, console, print_rows, results_root, user_errors
from dplbench.errors import ConfigError

app = typer.Typer(help="Query the results table (DuckDB over Parquet).", no_args_is_help=True)
Opt = typer.Option


@app.command("ls")
@user_errors
def results_ls(
    results: Results = None,
    suite: Annotated[str, Opt(help="only this suite's rows")] = None,
) -> None:
    """One line per (suite, method, protocol, dataset): runs, rows, mean accuracy.

    Example: dplbench results ls --suite smoke
    """
    from dplbench.results import store

    root = results_root(results)
    store.require_results(root, suite, ("rows", "status"))
    rows = store.query(
        root,
        "SELECT suite, method, protocol, dataset, subsample, count(*) AS rows, "
        "count(DISTINCT seed) AS seeds, round(avg(accuracy), 2) AS accuracy, "
        "max(created_at) AS latest FROM results WHERE $suite IS NULL OR suite = $suite "
        "GROUP BY ALL ORDER BY ALL",
        {"suite": suite},
    )
    print_rows(rows.to_pylist())
    failed = store.query(
        root,
        "SELECT job_id, method, protocol, dataset, seed, status, error, log FROM status "
        "WHERE status IN ('failed', 'stopped') AND ($suite IS NULL OR suite = $suite) "
        "AND job_id NOT IN (SELECT job_id FROM rows) ORDER BY dataset, method, seed",
        {"suite": suite},
    ).to_pylist()
    if failed:
        print_rows(failed, f"{len(failed)} failed jobs without results (dplbench run --resume)")


@app.command("query")
@user_errors
def results_query(
    sql: Annotated[
        str, typer.Argument(help="SQL over the views rows, results, epochs, status, outcomes")
    ],
    results: Results = None,
    fmt: Annotated[str, Opt("--format", help="table | csv | json")] = "table",
) -> None:
    """DuckDB SQL over the results. `results` = latest run per job and split; `rows` = all runs;
    `epochs` = per-epoch training metrics; `outcomes` = per-sample outcomes (which test samples
    each job run got right, keyed by sample key; docs/results.md §1).

    Example: dplbench results query "SELECT method, avg(accuracy) FROM results GROUP BY method"
    """
    import duckdb

    from dplbench.results import store

    root = results_root(results)
    store.require_results(root, tables=("rows", "status", "epochs"))
    try:
        table = store.query(root, sql)
    except duckdb.Error as e:
        raise ConfigError(f"query failed: {str(e).splitlines()[0]}") from None
    rows = table.to_pylist()
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, default=str, indent=1) + "\n")
    elif fmt == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=table.column_names)
        w.writeheader()
        w.writerows(rows)
    else:
        print_rows(rows)


@app.command("show")
@user_errors
def results_show(
    job: Annotated[str, typer.Argument(help="job id (or a unique prefix)")],
    results: Results = None,
) -> None:
    """A job's rows, its resolved config and its per-epoch metrics.

    Example: dplbench results show 7b185f2c
    """
    from dplbench.results import store

    root = results_root(results)
    store.require_results(root)
    rows = store.query(
        root,
        "SELECT * FROM rows WHERE starts_with(job_id, $job) ORDER BY created_at",
        {"job": job},
    ).to_pylist()
    if not rows:
        raise ConfigError(f"no rows for job {job!r} under {root}")
    if len({r["job_id"] for r in rows}) > 1:
        raise ConfigError(f"job prefix {job!r} is ambiguous; give more characters")
    keep = (
        "run_id", "dataset", "subsample", "split", "accuracy", "correct", "total",
        "train_seconds", "eval_seconds", "hardware", "code_version", "created_at",
    )  # fmt: skip
    print_rows([{k: r[k] for k in keep} for r in rows], f"job {rows[0]['job_id']}")
    console.print_json(rows[-1]["config"])
    if store.has_rows(root, "epochs"):
        ep = store.query(
            root,
            "SELECT * EXCLUDE (job_id, suite, method) FROM epochs WHERE job_id = $job "
            "ORDER BY run_id, epoch",
            {"job": rows[0]["job_id"]},
        ).to_pylist()
        print_rows(
            [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in ep],
            "epochs",
        )


@app.command("compact")
@user_errors
def results_compact(
    results: Results = None,
    table: Annotated[
        str, Opt(help="comma list of tables to compact: rows, epochs, status, outcomes")
    ] = "rows,epochs,status,outcomes",
    keep_sources: Annotated[
        bool, Opt(help="leave the compacted files' sources in place (readers skip them)")
    ] = False,
) -> None:
    """Each table partition's many small files become one (or a few), named with their sources
    by a manifest; readers then read a handful of files instead of one per job run. Safe while
    runs write and if killed; run it again to finish (docs/results.md §1).

    Example: dplbench results compact --results s3://lab/results
    """
    from dplbench.cli.common import csv_list
    from dplbench.results import store
    from dplbench.results.compact import compact

    tables = tuple(csv_list(table) or ())
    unknown = sorted(set(tables) - set(store.TABLES))
    if unknown or not tables:
        raise ConfigError(f"--table {table!r}: choose from {', '.join(store.TABLES)} (comma list)")
    root = results_root(results)
    store.require_results(root, tables=tables)
    done = compact(root, tables, keep_sources=keep_sources)
    rows = [
        {"table": f.table, "partition": f.folder[len(root.table(f.table)) :].strip("/"),
         "files in": f.files_in, "files out": f.files_out, "rows": f.rows, "removed": f.removed,
         "note": f.skipped or ""}
        for f in done.folders
    ]  # fmt: skip
    if rows:
        print_rows(rows, f"compacted in {done.seconds:.1f} s")
    for t, who in done.held.items():
        console.print(f"{t}: another compaction is running ({who}); left alone", highlight=False)
    if not rows and not done.held:
        console.print(f"nothing to compact under {root}", highlight=False)
