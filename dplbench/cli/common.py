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
from dplbench import defaults
from dplbench.errors import ConfigError, UserError

# Tables stay readable in logs and CI (no terminal: rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

Opt = typer.Option
# `results`, `report`, `explain` and `data` read results where `run` writes them; the defaults
# come from the environment when the command runs (dplbench/defaults.py).
Results = Annotated[
    str | None,
    Opt("--results", help=f"results root (default ${defaults.RESULTS_ENV}, else ./results)"),
]
Data = Annotated[str | None, Opt(help=f"shards root (default ${defaults.DATA_ENV}, else ./shards)")]
Overrides = Annotated[list[str], typer.Argument(help="method config overrides key=value")]


def results_root(value: str | None):
    """The results root a command was given (or the default), as the object that names every
    file under it (results/root.py)."""
    from dplbench.results.root import ResultsRoot

    return ResultsRoot(value or defaults.results_root())


def data_root(value: str | None) -> str:
    return value or defaults.data_root()


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
        except KeyboardInterrupt:  # a second Ctrl-C while a run stopped (run/interrupt.py)
            err.print(f"interrupted again: stopped at once; resume with: {resume_command()}",
                      highlight=False, soft_wrap=True)  # fmt: skip
            raise typer.Exit(INTERRUPTED) from None

    return wrapper


class Process:
    """What the `dplbench` process learns while a command runs, handed down as the click
    context's `obj` by `main` (cli/__init__.py): whether a run started and stopped its own local
    Ray cluster (then the process may end without tearing down Ray's modules)."""

    stopped_local_cluster = False


# The exit code of a command a signal stopped, as a shell reports Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


def resume_command() -> str:
    """The command this process runs, with --resume: what continues it after an interrupt."""
    import shlex

    args = sys.argv[1:]
    return shlex.join(["dplbench", *args, *([] if "--resume" in args else ["--resume"])])


def said_nothing_to_do(result) -> bool:
    """--resume with every job's (a sweep's: trial's) results there: one line; nothing ran."""
    if not result.nothing_to_do:
        return False
    runs = sorted({r for r in result.checks.kept.values() if r})
    sweep = result.plan.sweep
    what = f"{len(sweep.trials)} trials" if sweep else f"{len(result.plan.jobs)} jobs"
    console.print(
        f"--resume: all {what} already have results "
        f"(run{'s' if len(runs) > 1 else ''} {', '.join(runs) or '–'}); nothing to run",
        highlight=False,
        soft_wrap=True,
    )
    return True


def exit_after_run(result, code: int) -> None:
    """End a command that executed a plan: tell the process how Ray ended, exit with `code`;
    an interrupted run ends with one line (what is done, stopped, not started; the command that
    resumes it) and exit code 130."""
    import click

    ctx = click.get_current_context(silent=True)
    process = ctx.find_root().obj if ctx is not None else None
    if isinstance(process, Process) and result.stopped_local_cluster:
        process.stopped_local_cluster = True
    if result.interrupted:
        s = result.summary
        counts = {"done": s.count("done") + len(s.skipped), "failed": s.count("failed"),
                  "stopped": s.count("stopped"), "not started": s.count("not started")}  # fmt: skip
        said = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k != "failed")
        console.print(
            f"interrupted ({result.interrupted}): {said}; resume with: {resume_command()}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(INTERRUPTED)
    if code:
        raise typer.Exit(code)


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
