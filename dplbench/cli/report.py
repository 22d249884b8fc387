"""`dplbench report`: the paper's tables from the results."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markdown import Markdown

from dplbench.cli.common import Results, console, results_root, user_errors

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command()(report)


@user_errors
def report(
    suite: Annotated[str, Opt(help="only this suite's jobs")] = None,
    compare: Annotated[
        bool, Opt("--compare/--no-compare", help="published numbers beside ours")
    ] = True,
    results: Results = None,
    out: Annotated[str, Opt(help="folder for report.md and the PNG plots")] = None,
    baseline: Annotated[
        str, Opt(help="compare every method with this one: paired differences, intervals, tests")
    ] = None,
) -> None:
    """The paper's tables from the results, next to the published numbers, with 95% intervals;
    Markdown + PNG. With --baseline, each method minus the baseline per dataset, paired.

    Example: dplbench report --suite base2novel --baseline kgcoop --out reports/b2n
    """
    from dplbench.results.render import write_report

    print_report(write_report(results_root(results), suite, compare, out, baseline))


def print_report(files) -> None:
    console.print(Markdown(files.text))
    console.print(f"report: {files.markdown}" + "".join(f"\nplot: {p}" for p in files.plots))
