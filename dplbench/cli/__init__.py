"""The `dplbench` command line, assembled downward: this module imports each command group; no
command module imports it back. Commands are thin: parse, call one library function, print."""

from __future__ import annotations

import logging
import os
import sys

import typer

from dplbench.cli import ablate, bench, data, explain, llm, report, results, run, tune
from dplbench.cli.common import Process

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


def main() -> None:
    """The `dplbench` command. After a run that started and stopped its own local Ray cluster,
    the process ends without tearing down the thousands of modules Ray and Tune loaded (a second
    of a small suite's wall time): every result is written and every stream flushed by then."""
    process = Process()
    try:
        app(obj=process)
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    if process.stopped_local_cluster:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    raise SystemExit(code)
