"""`dplbench tune`: a sweep of method parameters on Ray Tune, selected on validation data."""

from __future__ import annotations

import typer
from rich.table import Table

from dplbench.cli.common import console, err, exit_after_run, said_nothing_to_do, user_errors
from dplbench.cli.options import launch_options
from dplbench.request import LaunchRequest, SweepSelection, fields_of


def register(app: typer.Typer) -> None:
    app.command()(tune)


@user_errors
@launch_options(extra=fields_of(SweepSelection))
def tune(request: LaunchRequest) -> None:
    """Sweep method parameters; select on validation data; Parquet + summary + plot + best.

    Example: dplbench tune --param entropy_weight --values 0.01,0.05,0.1 --suite smoke
    """
    from dplbench.cli.live import TrialTable, live, print_plan
    from dplbench.plan import plan_of
    from dplbench.run import execute

    plan = plan_of(request, "sweep")
    if request.output.dry_run:
        checks = execute(plan, request).checks
        what = f"sweep {plan.name}: {len(plan.sweep.trials)} trials, {len(plan.jobs)} jobs"
        print_plan(TrialTable(plan), plan.jobs, checks, what, request.output.format)
        return
    with live(TrialTable(plan)) as on_event:
        result = execute(plan, request, on_event)
    if said_nothing_to_do(result):
        return
    print_sweep(result.finished)
    for line in result.checks.notes:
        console.print(line, highlight=False, soft_wrap=True)
    for r in result.finished.trials():
        if r["status"] == "failed":
            err.print(f"[red]failed[/red] trial {r['trial']}: {r.get('error')}")
    exit_after_run(result, 0)


def print_sweep(result) -> None:
    from dplbench.plan.sweeps import best_overrides

    rows = result.trials()
    t = Table(title=f"sweep {result.sweep.name}: best validation objective first")
    cols = list(dict.fromkeys(k for r in rows for k in r if k != "error"))
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(
            *(
                f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))
                for v in (r.get(c) for c in cols)
            )
        )
    console.print(t)
    if result.skipped:
        console.print(f"--resume: kept {len(result.skipped)} trials from earlier runs")
    for label, path in result.files.items():
        console.print(f"{label}: {path}")
    best, setting = result.best(), result.best_setting()
    if best is None:
        console.print("no trial completed: no best configuration")
        return
    console.print(f"best (objective {best['objective']:.2f}):", highlight=False)
    console.print(" ".join(best_overrides(setting)), highlight=False, soft_wrap=True)
