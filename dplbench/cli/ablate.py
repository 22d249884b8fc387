"""`dplbench ablate`: the paper's ablations (configs/ablations/*.yaml) and their tables."""

from __future__ import annotations

from typing import Annotated

import typer

from dplbench.cli.common import console, exit_after_run, user_errors
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
    from dplbench.plan import ablations, plan_of

    if name is None:
        for n in ablations.list_ablations():
            console.print(f"{n}: {ablations.load_ablation(n).description}", highlight=False)
        return
    request = request.replace(ablation=name)
    plan = plan_of(request, "ablation")
    if table_only:
        from dplbench.run.finish import ablation_table

        table = ablation_table(plan, request.root)
    elif request.output.dry_run:
        from dplbench.cli.run import print_dry_run

        print_dry_run(plan, request)
        return
    else:
        from dplbench.cli.run import run_live

        result = run_live(plan, request)
        if result.nothing_to_do:  # run_live said so; `ablate --table` prints the table
            return
        table = result.finished
    console.print(table.text, highlight=False)
    console.print(f"table: {table.path}")
    if not table_only:
        exit_after_run(result, 1 if result.failed else 0)
