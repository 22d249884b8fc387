"""The `dplbench` command line. Thin: each command builds a config and calls one library function."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from dplbench.cli_options import (
    DATA_DEFAULT,
    RESULTS_DEFAULT,
    Address,
    Cpus,
    Data,
    Datasets,
    DryRun,
    Gpus,
    LoaderWorkers,
    Overrides,
    Results,
    Seeds,
    UseRay,
    Workers,
)
from dplbench.config import ConfigError, parse_overrides
from dplbench.data.cli import app as data_app
from dplbench.data.errors import DataError

app = typer.Typer(
    help="Dropout Prompt Learning for CLIP: train, benchmark and report on a Ray cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(
    help="Benchmarks (timings as ratios measured side by side).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
results_app = typer.Typer(
    help="Query the results table (DuckDB over Parquet).", no_args_is_help=True
)
app.add_typer(results_app, name="results")
# Tables stay readable in logs and CI (no terminal: rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

Opt = typer.Option


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _ints(value: str | None) -> list[int] | None:
    try:
        return [int(v) for v in _csv(value)] if value else None
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {value!r}") from None


def user_errors(fn):
    """Bad input is one red line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("root").setLevel(logging.WARNING)
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


# ---- run -----------------------------------------------------------------------------------


class JobTable:
    """The live table of `dplbench run`: one line per job, updated from Tune callbacks."""

    def __init__(self, jobs) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.state = {j.id: ("queued", "") for j in jobs}

    def event(self, job_id: str, state: str, info: dict) -> None:
        if job_id not in self.jobs:
            return
        j = self.jobs[job_id]
        detail = ""
        if "epoch" in info:
            detail = f"epoch {info['epoch']}/{j.epochs}"
            if info.get("loss") is not None:
                detail += f"  loss {info['loss']:.3f}"
        if state == "failed" and info.get("error"):
            detail = info["error"][:60]
        self.state[job_id] = (state, detail)

    def render(self) -> Table:
        counts = {
            s: sum(1 for v in self.state.values() if v[0] == s)
            for s in ("queued", "running", "done", "failed")
        }
        t = Table(title=" · ".join(f"{k} {v}" for k, v in counts.items()), title_justify="left")
        for col in ("job", "method", "protocol", "train on", "evaluate", "seed", "state", ""):
            t.add_column(col)
        style = {"done": "green", "failed": "red", "running": "yellow", "queued": "dim"}
        for jid, j in self.jobs.items():
            state, detail = self.state[jid]
            evals = ",".join(f"{e.dataset}/{e.subsample}" for e in j.evals)
            t.add_row(
                jid[:10],
                j.method,
                j.protocol,
                "–"
                if not j.trains
                else f"{j.train.dataset}/{j.train.subsample}"
                + (f" k{j.train.shots}" if j.train.shots else ""),
                evals,
                str(j.seed),
                f"[{style[state]}]{state}[/]",
                detail,
            )
        return t


def selections_from_cli(methods, datasets, seeds, workers, overrides) -> dict:
    return {
        "methods": _csv(methods),
        "datasets": _csv(datasets),
        "seeds": _ints(seeds),
        "workers": workers,
        "overrides": parse_overrides(overrides),
    }


@app.command()
@user_errors
def run(
    suite: Annotated[str, Opt(help="suite name (configs/suites) or a YAML path")] = "smoke",
    methods: Annotated[str, Opt(help="comma list: restrict/replace the suite's methods")] = None,
    datasets: Datasets = None,
    seeds: Seeds = None,
    gpus: Gpus = 0,
    cpus: Cpus = None,
    workers: Workers = None,
    address: Address = None,
    data: Data = DATA_DEFAULT,
    results_root: Results = RESULTS_DEFAULT,
    resume: Annotated[bool, Opt(help="run only jobs whose result rows are missing")] = False,
    dry_run: DryRun = False,
    ray: UseRay = True,
    loader_workers: LoaderWorkers = 2,
    override: Overrides = None,
) -> None:
    """Run a suite: every job a Ray Train run, many at once, results into Parquet.

    Example: dplbench run --suite base2novel --methods dpl,promptsrc --gpus 32 iwtd.p_max=0.4
    """
    from dplbench.execution import ExecOptions
    from dplbench.runner import run_suite
    from dplbench.suites import load_suite
    from dplbench.train import RunSettings

    s = load_suite(suite, selections_from_cli(methods, datasets, seeds, workers, override))
    table = JobTable(s.jobs)
    if dry_run:
        console.print(table.render())
        console.print(f"{len(s.jobs)} jobs; nothing was run (--dry-run)")
        return
    settings = RunSettings(
        data=str(Path(data).resolve()) if "://" not in data else data,
        results=str(Path(results_root).resolve()),
        suite=s.name,
        loader_workers=loader_workers,
        fail_job=os.environ.get("DPLBENCH_FAIL_JOB"),  # testing hook: make one job fail
    )
    opts = ExecOptions(gpus=gpus, cpus=cpus, address=address, resume=resume, use_ray=ray)
    with Live(
        table.render(), console=console, auto_refresh=False, transient=not console.is_terminal
    ) as live:

        def on_event(job_id, state, info):
            table.event(job_id, state, info)
            live.update(table.render(), refresh=True)

        summary = run_suite(s, settings, opts, on_event)
    console.print(table.render())
    if summary.skipped:
        console.print(f"--resume: {len(summary.skipped)} jobs already had results")
    _print_summary(results_root, [o.job.id for o in summary.outcomes])
    for o in summary.failed:
        err.print(f"[red]failed[/red] {o.job.id} {o.job.method} {o.job.train.dataset}: {o.error}")
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(results_root: str, job_ids: list[str]) -> None:
    from dplbench import results

    if not job_ids or not results.has_rows(results_root):
        return
    ids = ",".join(f"'{j}'" for j in job_ids)
    rows = results.query(
        results_root,
        "SELECT method, dataset, subsample, count(*) AS seeds, round(avg(accuracy), 2) AS accuracy "
        f"FROM results WHERE job_id IN ({ids}) GROUP BY ALL ORDER BY dataset, method, subsample",
    ).to_pylist()
    _print_rows(rows, "summary (mean over seeds)")


def _print_rows(rows: list[dict], title: str | None = None) -> None:
    if not rows:
        console.print("no rows")
        return
    t = Table(title=title)
    for col in rows[0]:
        t.add_column(str(col))
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r.values()))
    console.print(t)


# ---- results -------------------------------------------------------------------------------


@results_app.command("ls")
@user_errors
def results_ls(
    results_root: Results = RESULTS_DEFAULT,
    suite: Annotated[str, Opt(help="only this suite's rows")] = None,
) -> None:
    """One line per (suite, method, protocol, dataset): runs, rows, mean accuracy.

    Example: dplbench results ls --suite smoke
    """
    from dplbench import results

    where = f"WHERE suite = '{_sql_str(suite)}'" if suite else ""
    _print_rows(
        results.query(
            results_root,
            "SELECT suite, method, protocol, dataset, subsample, count(*) AS rows, "
            "count(DISTINCT seed) AS seeds, round(avg(accuracy), 2) AS accuracy, "
            f"max(created_at) AS latest FROM results {where} GROUP BY ALL ORDER BY ALL",
        ).to_pylist()
    )


@results_app.command("query")
@user_errors
def results_query(
    sql: Annotated[str, typer.Argument(help="SQL over the views rows, results, epochs")],
    results_root: Results = RESULTS_DEFAULT,
    fmt: Annotated[str, Opt("--format", help="table | csv | json")] = "table",
) -> None:
    """DuckDB SQL over the results. `results` = latest run per job and split; `rows` = all runs;
    `epochs` = per-epoch training metrics.

    Example: dplbench results query "SELECT method, avg(accuracy) FROM results GROUP BY method"
    """
    import duckdb

    from dplbench import results

    try:
        table = results.query(results_root, sql)
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
        _print_rows(rows)


@results_app.command("show")
@user_errors
def results_show(
    job: Annotated[str, typer.Argument(help="job id (or a unique prefix)")],
    results_root: Results = RESULTS_DEFAULT,
) -> None:
    """A job's rows, its resolved config and its per-epoch metrics.

    Example: dplbench results show 7b185f2c
    """
    from dplbench import results

    rows = results.query(
        results_root, f"SELECT * FROM rows WHERE job_id LIKE '{_sql_str(job)}%' ORDER BY created_at"
    ).to_pylist()
    if not rows:
        raise ConfigError(f"no rows for job {job!r} under {results_root}")
    if len({r["job_id"] for r in rows}) > 1:
        raise ConfigError(f"job prefix {job!r} is ambiguous; give more characters")
    keep = (
        "run_id",
        "dataset",
        "subsample",
        "split",
        "accuracy",
        "correct",
        "total",
        "train_seconds",
        "eval_seconds",
        "hardware",
        "code_version",
        "created_at",
    )
    _print_rows([{k: r[k] for k in keep} for r in rows], f"job {rows[0]['job_id']}")
    console.print_json(rows[-1]["config"])
    if results.has_rows(results_root, "epochs"):
        ep = results.query(
            results_root,
            f"SELECT * EXCLUDE (job_id, suite, method) FROM epochs WHERE job_id = '{rows[0]['job_id']}' "
            "ORDER BY run_id, epoch",
        ).to_pylist()
        _print_rows(
            [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in ep],
            "epochs",
        )


def _sql_str(value: str) -> str:
    return value.replace("'", "''")


# ---- report, demo --------------------------------------------------------------------------


@app.command()
@user_errors
def report(
    suite: Annotated[str, Opt(help="only this suite's jobs")] = None,
    compare: Annotated[
        bool, Opt("--compare/--no-compare", help="published numbers beside ours")
    ] = True,
    results_root: Results = RESULTS_DEFAULT,
    out: Annotated[str, Opt(help="folder for report.md and the PNG plots")] = None,
) -> None:
    """The paper's tables from the results, next to the published numbers; Markdown + PNG.

    Example: dplbench report --suite base2novel --out reports/b2n
    """
    from dplbench import results
    from dplbench.report import render_report

    rows = results.latest_rows(results_root).to_pylist()
    out_dir = Path(out or Path(results_root) / "reports" / (suite or "all"))
    files = render_report(rows, out_dir, suite=suite, compare=compare)
    console.print(files.markdown.read_text())
    console.print(f"report: {files.markdown}" + "".join(f"\nplot: {p}" for p in files.plots))


@app.command()
@user_errors
def demo(
    data: Data = DATA_DEFAULT,
    results_root: Results = RESULTS_DEFAULT,
) -> None:
    """The smoke suite on local Ray (synthetic data, tiny CLIP, CPU), then its report.

    Example: dplbench demo
    """
    # Annotated options keep their defaults as plain values: name only what differs.
    run(suite="smoke", data=data, results_root=results_root, loader_workers=1)
    report(suite="smoke", compare=True, results_root=results_root, out=None)


@bench_app.command("model")
def bench_model(
    models: str = typer.Option("dpl-tiny,ViT-B-16", help="open_clip architectures (random init)"),
    methods: str = typer.Option(None, help="comma list; default: every registered method"),
    batch: int = typer.Option(4, help="training batch"),
    eval_batch: int = typer.Option(4, help="evaluation batch"),
    classes: int = typer.Option(50, help="classes in the prompt list"),
    steps: int = typer.Option(3, help="timed steps (after warm-up)"),
    warmup: int = typer.Option(2),
    device: str = typer.Option(None, help="cuda / cpu (default: cuda if available)"),
    bf16: bool = typer.Option(None, "--bf16/--fp32", help="autocast (default: bf16 on GPU)"),
) -> None:
    """Train-step time and eval throughput of every method, with ratios to ivlp and zsclip.

    Example: dplbench bench model --models dpl-tiny --steps 10
    """
    from dplbench.bench import bench_models, ratio_table

    logging.getLogger().setLevel(logging.ERROR)
    rows = ratio_table(
        bench_models(
            _csv(models), _csv(methods), batch, eval_batch, classes, steps, warmup, device, bf16
        )
    )
    table = Table(title=f"train batch {batch}, eval batch {eval_batch}, {classes} classes")
    for col in ("model", "method", "train ms", "× ivlp", "eval img/s", "× zsclip", "peak MiB"):
        table.add_column(col, justify="right" if col not in ("model", "method") else "left")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in rows:
        table.add_row(
            r["model"],
            r["method"],
            fmt(r["train_ms"], ".1f"),
            fmt(r["train_vs_ivlp"], ".3f"),
            fmt(r["eval_img_s"], ".1f"),
            fmt(r["eval_vs_zsclip"], ".3f"),
            fmt(r["peak_mib"], ".0f"),
        )
    console.print(table, width=max(console.width, 100))


# `tune` and `ablate` live in their own module (sweeps.py / ablations.py behind them).
from dplbench.tune_cli import register  # noqa: E402

register(app)

if __name__ == "__main__":
    app()
