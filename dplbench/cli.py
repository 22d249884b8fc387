"""The `dplbench` command line. Thin: each command builds a config and calls one library function."""

from __future__ import annotations

import typer

from dplbench.data.cli import app as data_app

app = typer.Typer(
    help="Dropout Prompt Learning for CLIP: train, benchmark and report on a Ray cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
