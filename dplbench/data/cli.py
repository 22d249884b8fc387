"""`dplbench data ...` (placeholder until the data layer lands)."""

import typer

app = typer.Typer(help="Convert, subsample, synthesise and verify benchmark data.", no_args_is_help=True)
