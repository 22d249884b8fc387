"""`dplbench run` and `dplbench demo`."""

from __future__ import annotations

import typer

from dplbench.cli.common import (
    DATA_DEFAULT,
    RESULTS_DEFAULT,
    Data,
    Results,
    console,
    err,
    print_rows,
    user_errors,
)
from dplbench.cli.options import launch_options
from dplbench.request import LaunchRequest


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(demo)


@user_errors
@launch_options(extra=("methods",))
def run(request: LaunchRequest) -> None:
    """Run a suite: every job a Ray Train run, many at once, results into Parquet.

    Example: dplbench run --suite base2novel --methods dpl,promptsrc --gpus 32 iwtd.p_max=0.4
    """
    from dplbench.cli.live import JobTable, print_plan
    from dplbench.plan.suites import load_suite
    from dplbench.run import execute

    plan = load_suite(request.what.suite or "smoke", request.what, request.llm_caches)
    if request.output.dry_run:
        checks = execute(plan, request).checks
        print_plan(JobTable(plan.jobs), plan.jobs, checks, f"{len(plan.jobs)} jobs",
                   request.output.format)  # fmt: skip
        return
    if run_live(plan, request).failed:
        raise typer.Exit(1)


def run_live(plan, request: LaunchRequest):
    """Execute a suite (or an ablation's variants) under the live table; print the outcome."""
    from dplbench.cli.live import JobTable, live
    from dplbench.run import execute

    with live(JobTable(plan.jobs)) as on_event:
        result = execute(plan, request, on_event)
    print_outcome(result)
    return result


def print_outcome(result) -> None:
    """After a suite (or an ablation's variants): what --resume kept, the summary of the jobs'
    scores, the one line of each failed job, the notes of the checks."""
    summary = result.summary
    if summary.skipped or summary.rerun_failed:
        missing = len(summary.outcomes) - len(summary.rerun_failed)
        console.print(
            f"--resume: {len(summary.skipped)} jobs already had results; ran "
            f"{len(summary.rerun_failed)} failed and {missing} missing again",
            highlight=False,
        )
    if summary.elsewhere:
        holders = sorted(set(summary.elsewhere.values()))
        console.print(
            f"skipped {len(summary.elsewhere)} jobs another driver is running "
            f"({'; '.join(holders)}); --on-lease wait waits for them, --resume runs what is left",
            highlight=False,
        )
    print_summary(result.request.results, [o.job.id for o in summary.outcomes])
    for o in summary.failed:
        label = o.job.params.get("variant") or f"{o.job.method} {o.job.train.dataset}"
        err.print(
            f"[red]failed[/red] {o.job.id} {label}: {o.error}", highlight=False, soft_wrap=True
        )
    if summary.status_file:
        console.print(f"job status: {summary.status_file}", highlight=False)
    for line in result.checks.notes:
        console.print(line, highlight=False, soft_wrap=True)


def print_summary(results_root: str, job_ids: list[str]) -> None:
    """Per method and dataset, the mean over seeds: base, novel and HM for base-to-novel jobs
    (as the live table shows them), else the accuracy of each evaluated set."""
    from dplbench.results import store
    from dplbench.results.aggregate import harmonic_mean

    if not job_ids or not store.has_rows(results_root):
        return
    rows = store.query(
        results_root,
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

        def num(v):
            return "" if v is None else f"{v:.2f}"

        table.append(
            {
                "method": method,
                "dataset": dataset,
                "seeds": c["seeds"],
                "base": num(c.get("base")),
                "novel": num(c.get("novel")),
                "HM": num(hm),
                "accuracy": num(c.get("all")),
            }  # fmt: skip
        )
    keep = [k for k in ("base", "novel", "HM", "accuracy") if any(r[k] for r in table)]
    print_rows(
        [{k: r[k] for k in ("method", "dataset", "seeds", *keep)} for r in table],
        "summary (mean over seeds)",
    )


@user_errors
def demo(data: Data = DATA_DEFAULT, results_root: Results = RESULTS_DEFAULT) -> None:
    """The smoke suite on local Ray (synthetic data, tiny CLIP, CPU), then its report.

    Example: dplbench demo
    """
    from dplbench.cli.report import report
    from dplbench.plan.suites import load_suite

    request = LaunchRequest.of(suite="smoke", loader_workers=1, data=data, results=results_root)
    result = run_live(load_suite("smoke", request.what, request.llm_caches), request)
    report(suite="smoke", compare=True, results_root=request.results, out=None)
    if result.failed:
        raise typer.Exit(1)
