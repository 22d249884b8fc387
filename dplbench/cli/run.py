"""`dplbench run` and `dplbench demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from dplbench.cli.common import (
    Data,
    Results,
    console,
    data_root,
    err,
    exit_after_run,
    print_rows,
    results_root,
    said_nothing_to_do,
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
    from dplbench.plan import plan_of

    plan = plan_of(request, "suite")
    if request.output.dry_run:
        print_dry_run(plan, request)
        return
    result = run_live(plan, request)
    exit_after_run(result, 1 if result.failed else 0)


def print_dry_run(plan, request: LaunchRequest) -> None:
    """A suite's or an ablation's plan: its jobs, how they are cut into units, the checks."""
    from dplbench.cli.live import JobTable, print_plan
    from dplbench.run import execute

    checks = execute(plan, request).checks
    print_plan(JobTable(plan.jobs), plan.jobs, checks, f"{len(plan.jobs)} jobs",
               request.output.format)  # fmt: skip


def run_live(plan, request: LaunchRequest):
    """Execute a suite (or an ablation's variants) under the live table; print the outcome."""
    from dplbench.cli.live import JobTable, live
    from dplbench.run import execute

    with live(JobTable(plan.jobs)) as on_event:
        result = execute(plan, request, on_event)
    if not said_nothing_to_do(result):
        print_outcome(result)
    return result


def print_outcome(result) -> None:
    """After a suite (or an ablation's variants): what --resume kept, the summary of the jobs'
    scores, the one line of each failed job, the notes of the checks."""
    summary = result.summary
    if summary.skipped or summary.rerun_failed or summary.rerun_stopped:
        failed, stopped = len(summary.rerun_failed), len(summary.rerun_stopped)
        missing = len(summary.outcomes) - failed - stopped
        console.print(
            f"--resume: {len(summary.skipped)} jobs already had results; ran {failed} failed, "
            f"{stopped} stopped and {missing} missing again",
            highlight=False,
        )
    if summary.elsewhere:
        holders = sorted(set(summary.elsewhere.values()))
        console.print(
            f"skipped {len(summary.elsewhere)} jobs another driver is running "
            f"({'; '.join(holders)}); --on-lease wait waits for them, --resume runs what is left",
            highlight=False,
        )
    rows = result.summary_rows()
    if rows:
        from dplbench.results.summary import as_text

        print_rows(as_text(rows), "summary (mean over seeds)")
    for o in summary.failed:
        label = o.job.params.get("variant") or f"{o.job.method} {o.job.train.dataset}"
        err.print(
            f"[red]failed[/red] {o.job.id} {label}: {o.error}", highlight=False, soft_wrap=True
        )
    if summary.status_file:
        console.print(f"job status: {summary.status_file}", highlight=False)
    for line in result.checks.notes:
        console.print(line, highlight=False, soft_wrap=True)


@user_errors
def demo(
    data: Data = None,
    results: Results = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted demo")] = False,
) -> None:
    """The smoke suite on local Ray (synthetic data, tiny CLIP, CPU), then its report.

    Example: dplbench demo
    """
    from dplbench.cli.report import print_report
    from dplbench.plan import plan_of
    from dplbench.results.render import write_report

    request = LaunchRequest.of(
        suite="smoke", loader_workers=1, data=data_root(data), results=str(results_root(results)),
        resume=resume,
    )  # fmt: skip
    result = run_live(plan_of(request, "suite"), request)
    if not result.interrupted:
        print_report(write_report(results_root(results), "smoke", compare=True))
    exit_after_run(result, 1 if result.failed else 0)
