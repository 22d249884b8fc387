"""The `dplbench` command line, assembled downward: this module imports each command group; no
command module imports it back. Commands are thin: parse, call one library function, print."""

from __future__ import annotations

import typer

from dplbench.cli import ablate, bench, data, explain, llm, report, results, run, tune

app = typer.Typer(
    help="Dropout Prompt Learning for CLIP: train, benchmark and report on a Ray cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
run.register(app)
report.register(app)
explain.register(app)
tune.register(app)
ablate.register(app)
app.add_typer(results.app, name="results")
app.add_typer(data.app, name="data")
app.add_typer(bench.app, name="bench")
app.add_typer(llm.app, name="llm")
