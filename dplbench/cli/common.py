"""What every command shares: the consoles, bad input as one line, comma lists, row tables.
Light on purpose: `dplbench --help` imports this and nothing that builds models or starts Ray."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dpl.methods import PluginError
from dpl.registry import UnknownNameError
from dplbench.errors import ConfigError, UserError
from dplbench.request import DATA_DEFAULT, RESULTS_DEFAULT  # noqa: F401  (the commands' defaults)

# Tables stay readable in logs and CI (no terminal: rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

Opt = typer.Option
# `results`, `report`, `explain` and `data` read results where `run` writes them.
Results = Annotated[str, Opt("--results", help="results root ($DPLBENCH_RESULTS)")]
Data = Annotated[str, Opt(help="shards root ($DPLBENCH_DATA)")]
Overrides = Annotated[list[str], typer.Argument(help="method config overrides key=value")]


def user_errors(fn):
    """The project's own errors (bad input) are one red line on stderr and exit code 2; anything
    else is a bug and shows as one."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return fn(*args, **kwargs)
        except (UserError, UnknownNameError, PluginError) as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(2) from None

    return wrapper


def csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def int_list(value: str | None) -> list[int] | None:
    try:
        return [int(v) for v in csv_list(value)] if value else None
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {value!r}") from None


def print_rows(rows: list[dict], title: str | None = None) -> None:
    if not rows:
        console.print("no rows")
        return
    t = Table(title=title)
    for col in rows[0]:
        t.add_column(str(col))
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r.values()))
    console.print(t)
