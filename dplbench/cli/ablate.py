"""`dplbench ablate`: the paper's ablations (configs/ablations/*.yaml) and their tables."""

from __future__ import annotations

from typing import Annotated

import typer

from dplbench.cli.common import console, user_errors
from dplbench.cli.options import launch_options
from dplbench.request import LaunchRequest


def register(app: typer.Typer) -> None:
    app.command()(ablate)


@user_errors
@launch_options()
def ablate(
    request: LaunchRequest,
    name: Annotated[
        str | None, typer.Argument(help="ablation: configs/ablations/<name> or a YAML path")
    ] = None,
    table_only: Annotated[
        bool, typer.Option("--table", help="print the table from the results; run nothing")
    ] = False,
) -> None:
    """Run an ablation's variants (configs/ablations/*.yaml) and print its table.

    Without NAME: list the ablations.

    Example: dplbench ablate rer --suite smoke --seeds 1 optim.epochs=2
    """
    from dplbench.plan import ablations

    if name is None:
        for n in ablations.list_ablations():
            console.print(f"{n}: {ablations.load_ablation(n).description}", highlight=False)
        return
    plan = ablations.ablation_plan(ablations.load_ablation(name), request.what, request.llm_caches)
    if table_only:
        from dplbench.run.executor import ablation_table

        text, path = ablation_table(plan, request.results)
    elif request.output.dry_run:
        from dplbench.cli.live import JobTable, print_plan
        from dplbench.run import execute

        checks = execute(plan, request).checks
        what = f"{len(plan.jobs)} jobs"
        print_plan(JobTable(plan.jobs), plan.jobs, checks, what, request.output.format)
        return
    else:
        from dplbench.cli.run import run_live

        result = run_live(plan, request)
        text, path = result.table
    console.print(text, highlight=False)
    console.print(f"table: {path}")
    if not table_only and result.failed:
        raise typer.Exit(1)
