"""What every command shares: the consoles, bad input as one line, the options of run / tune /
ablate (declared once, so they read the same everywhere), and the live tables."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from dpl.registry import UnknownNameError
from dplbench.errors import ConfigError, UserError
from dplbench.plan.config import parse_overrides

# Tables stay readable in logs and CI (no terminal: rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

Opt = typer.Option
DATA_DEFAULT = os.environ.get("DPLBENCH_DATA", "shards")
RESULTS_DEFAULT = os.environ.get("DPLBENCH_RESULTS", "results")

Datasets = Annotated[str, Opt(help="comma list: restrict the suite's datasets")]
Seeds = Annotated[str, Opt(help="comma list of seeds")]
Gpus = Annotated[int, Opt(help="GPUs to use in all (one per worker)")]
Cpus = Annotated[int, Opt(help="CPUs to use in all (default: all)")]
Workers = Annotated[int, Opt(help="DDP workers per job")]
Address = Annotated[str, Opt(help="join a running Ray cluster (e.g. auto)")]
Data = Annotated[str, Opt(help="shards root ($DPLBENCH_DATA)")]
Results = Annotated[str, Opt("--results", help="results root ($DPLBENCH_RESULTS)")]
DryRun = Annotated[bool, Opt(help="list the jobs and exit")]
UseRay = Annotated[bool, Opt("--ray/--no-ray", help="--no-ray: jobs in this process")]
LoaderWorkers = Annotated[int, Opt(help="data loader processes per worker")]
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
        except (UserError, UnknownNameError) as e:
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


def abs_path(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def selections(methods, datasets, seeds, workers, overrides) -> dict[str, Any]:
    """The command line's restrictions of a suite (plan.suites.load_suite)."""
    return {
        "methods": csv_list(methods),
        "datasets": csv_list(datasets),
        "seeds": int_list(seeds),
        "workers": workers,
        "overrides": parse_overrides(overrides),
    }


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


# ---- live tables ---------------------------------------------------------------------------

STYLE = {"done": "green", "failed": "red", "running": "yellow", "stopped": "cyan", "queued": "dim"}


class JobTable:
    """The live table of `dplbench run` / `ablate`: one line per job, updated from trial events."""

    def __init__(self, jobs) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.state = {j.id: ("queued", "") for j in jobs}

    def event(self, job_id: str, state: str, info: dict) -> None:
        if job_id not in self.jobs:
            return
        j = self.jobs[job_id]
        old_state, detail = self.state[job_id]
        if state == "result":
            state = old_state
            if "epoch" in info:
                detail = f"epoch {int(info['epoch']) + 1}/{j.epochs}"
                if info.get("loss") is not None:
                    detail += f"  loss {info['loss']:.3f}"
        if state == "failed" and info.get("error"):
            detail = info["error"][:60]
        self.state[job_id] = (state, detail)

    def render(self) -> Table:
        counts = {
            s: sum(1 for v in self.state.values() if v[0] == s)
            for s in ("queued", "running", "done", "failed")
        }
        t = Table(title=" · ".join(f"{k} {v}" for k, v in counts.items()), title_justify="left")
        for col in ("job", "method", "protocol", "train on", "evaluate", "seed", "state", ""):
            t.add_column(col)
        for jid, j in self.jobs.items():
            state, detail = self.state[jid]
            evals = ",".join(f"{e.dataset}/{e.subsample}" for e in j.evals)
            train = "–"
            if j.trains:
                train = f"{j.train.dataset}/{j.train.subsample}"
                train += f" k{j.train.shots}" if j.train.shots else ""
            t.add_row(
                jid[:10], j.method, j.protocol, train, evals, str(j.seed),
                f"[{STYLE[state]}]{state}[/]", detail,
            )  # fmt: skip
        return t


class TrialTable:
    """Live table of a sweep: one line per trial, updated from trial events."""

    def __init__(self, sweep) -> None:
        self.sweep = sweep
        self.state = {t.key: ("queued", "", None) for t in sweep.trials}

    def event(self, key: str, state: str, info: dict) -> None:
        old_state, epoch, obj = self.state.get(key, ("queued", "", None))
        if state == "result":
            state = old_state
        result = info.get("last", info)
        if result.get("epoch"):
            epoch = f"{int(result['epoch'])}/{self.sweep.epochs}"
        if result.get("objective") is not None:
            obj = result["objective"]
        if state == "failed" and info.get("error"):
            epoch = str(info["error"])[:60]
        self.state[key] = (state, epoch, obj)

    def render(self) -> Table:
        counts: dict[str, int] = {}
        for s, _, _ in self.state.values():
            counts[s] = counts.get(s, 0) + 1
        t = Table(title=" · ".join(f"{k} {v}" for k, v in counts.items()), title_justify="left")
        for col in ("trial", *self.sweep.params, "jobs", "state", "epoch", "objective"):
            t.add_column(col)
        for trial in self.sweep.trials:
            state, epoch, obj = self.state[trial.key]
            t.add_row(
                trial.key,
                *(str(trial.setting.get(p, "")) for p in self.sweep.params),
                str(len(trial.jobs)),
                f"[{STYLE.get(state, 'dim')}]{state}[/]",
                epoch,
                "" if obj is None else f"{obj:.2f}",
            )
        return t


@contextlib.contextmanager
def live(table: JobTable | TrialTable) -> Iterator[Any]:
    """Show `table` live while the block runs; yields the event sink that updates it."""
    with Live(
        table.render(), console=console, auto_refresh=False, transient=not console.is_terminal
    ) as view:

        def on_event(key: str, state: str, info: dict) -> None:
            table.event(key, state, info)
            view.update(table.render(), refresh=True)

        yield on_event
    console.print(table.render())
