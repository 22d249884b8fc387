"""`dplbench report`: the paper's tables from the results."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markdown import Markdown

from dplbench.cli.common import RESULTS_DEFAULT, Results, console, user_errors

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command()(report)


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
    from dplbench.plan.cost import load_all
    from dplbench.results import store
    from dplbench.results.report import render_report
    from dplbench.results.root import ResultsRoot

    rows = store.latest_rows(results_root).to_pylist()
    out_dir = out or ResultsRoot(results_root).report_dir(suite)
    # `bench model --results R` saved calibrations there: the cost figure
    calibrations = load_all(ResultsRoot(results_root).bench_dir())
    bench = calibrations[0].rows if calibrations else []
    epochs = []  # per-epoch test scores (eval_every_epoch): the selection-gap table
    if store.has_rows(results_root, "epochs"):
        table = store.query(results_root, "SELECT * FROM epochs")
        if any(c.startswith("test_") for c in table.column_names):
            epochs = table.to_pylist()
    files = render_report(rows, out_dir, suite=suite, compare=compare, bench=bench, epochs=epochs)
    console.print(Markdown(files.text))
    console.print(f"report: {files.markdown}" + "".join(f"\nplot: {p}" for p in files.plots))
