"""What every command shares: the consoles, bad input as one line, the options of run / tune /
ablate (declared once, so they read the same everywhere), and the live tables."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
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
OnDataError = Annotated[
    str,
    Opt(
        help="a corrupt image: raise (the job fails, naming shard and sample) or skip it "
        "(counted in the rows' `skipped` column and shown in the report)"
    ),
]
Overrides = Annotated[list[str], typer.Argument(help="method config overrides key=value")]
LlmCacheDir = Annotated[
    str,
    Opt(
        "--llm-cache",
        help="the LLM cache of llamp / dpl-release jobs (dplbench llm cache; "
        "default $DPLBENCH_LLM_CACHE or ./llm-cache)",
    ),
]


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


JobsPerGpu = Annotated[
    str,
    Opt(
        help="jobs sharing one GPU (fractional GPU resources); auto: as many as the calibrated "
        "peak memory fits, capped by the CPUs per GPU (dplbench bench model calibrates)"
    ),
]
Compile = Annotated[
    str,
    Opt(
        "--compile",
        help="torch.compile the training step: reduce-overhead (CUDA graphs: the launch-bound "
        "DPL step), default, max-autotune, or a backend (aot_eager); eager if it fails",
    ),
]
Track = Annotated[
    str,
    Opt(
        help="stream per-epoch metrics and final scores to mlflow or tensorboard (optional extras)"
    ),
]
TrackUri = Annotated[
    str, Opt(help="MLflow tracking URI / TensorBoard log folder (default: under --results)")
]
OnLease = Annotated[
    str,
    Opt(help="a job another driver is running on this results root: skip it or wait for it"),
]


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{option} {value!r}: choose {' or '.join(choices)}")
    return value


def jobs_per_gpu(value: str, jobs, gpus: int, cpus: int | None, results_root: str) -> int:
    """--jobs-per-gpu N or auto, resolved (auto needs the GPU calibration)."""
    if value != "auto":
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--jobs-per-gpu {value!r}: a positive integer or auto")
        return n
    if not gpus:
        return 1
    from dplbench.bench import calibration

    calib = calibration.load_for(gpus, abs_path(results_root))
    cpus_per_gpu = (cpus or os.cpu_count() or 1) / gpus
    n, why = calibration.auto_jobs_per_gpu(calib, list(jobs), cpus_per_gpu, 1.0)
    console.print(f"--jobs-per-gpu auto: {why}", highlight=False)
    return n


def check_on_data_error(value: str) -> str:
    if value not in ("raise", "skip"):
        raise ConfigError(f"--on-data-error {value!r}: choose raise or skip")
    return value


def abs_path(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def selections(methods, datasets, seeds, workers, overrides, llm_cache=None) -> dict[str, Any]:
    """The command line's restrictions of a suite (plan.suites.load_suite)."""
    return {
        "methods": csv_list(methods),
        "datasets": csv_list(datasets),
        "seeds": int_list(seeds),
        "workers": workers,
        "overrides": parse_overrides(overrides),
        "llm_cache": llm_cache,
    }


def check_llm_caches(jobs, dry_run: bool) -> None:
    """LLM caches the jobs need but lack: listed on --dry-run, otherwise one line and exit 2
    before anything starts."""
    from dplbench.plan.llm import missing_caches

    missing = missing_caches(jobs)
    if missing and not dry_run:
        raise ConfigError(missing[0])
    for line in missing:
        console.print(line, highlight=False, soft_wrap=True)


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


def print_resume(summary) -> None:
    """What --resume kept and what it runs again."""
    if summary.skipped or summary.rerun_failed:
        missing = len(summary.outcomes) - len(summary.rerun_failed)
        console.print(
            f"--resume: {len(summary.skipped)} jobs already had results; ran "
            f"{len(summary.rerun_failed)} failed and {missing} missing again",
            highlight=False,
        )
    if summary.elsewhere:
        holders = sorted(set(summary.elsewhere.values()))
        console.print(
            f"skipped {len(summary.elsewhere)} jobs another driver is running "
            f"({'; '.join(holders)}); --on-lease wait waits for them, --resume runs what is left",
            highlight=False,
        )


# ---- live tables ---------------------------------------------------------------------------

STYLE = {"done": "green", "failed": "red", "running": "yellow", "stopped": "cyan", "queued": "dim"}


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _scores(accuracy: dict | None) -> str:
    """base / novel / HM for base-to-novel jobs, else the accuracy of each evaluated set."""
    if not accuracy:
        return ""
    if {"base", "novel"} <= set(accuracy):
        b, n = accuracy["base"], accuracy["novel"]
        hm = 2 * b * n / (b + n) if b + n else 0.0
        return f"base {b:.1f}  novel {n:.1f}  HM {hm:.1f}"
    return "  ".join(f"acc {v:.1f}" for v in accuracy.values())


class JobTable:
    """The live table of `dplbench run` / `ablate`: one line per job (state, elapsed time, epoch
    and loss while it trains, its scores once done), and the suite's elapsed time, ETA and how
    jobs are packed onto GPUs."""

    def __init__(self, jobs, packing: str = "") -> None:
        self.packing = packing
        self.jobs = {j.id: j for j in jobs}
        self.state = {j.id: "queued" for j in jobs}
        self.detail = {j.id: "" for j in jobs}
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.most_running = 1

    def event(self, job_id: str, state: str, info: dict) -> None:
        if job_id not in self.jobs:
            return
        j, now = self.jobs[job_id], time.monotonic()
        if state == "result":
            if "epoch" in info:
                detail = f"epoch {int(info['epoch']) + 1}/{j.epochs}"
                if info.get("loss") is not None:
                    detail += f"  loss {info['loss']:.3f}"
                self.detail[job_id] = detail
            return
        self.state[job_id] = state
        if state == "running":
            self.started.setdefault(job_id, now)
            running = sum(1 for s in self.state.values() if s == "running")
            self.most_running = max(self.most_running, running)
        elif state in ("done", "failed", "stopped"):
            self.ended[job_id] = now
            if state == "done":
                self.detail[job_id] = _scores((info.get("last") or {}).get("accuracy"))
            elif info.get("error"):
                self.detail[job_id] = info["error"][:80]

    def eta(self) -> float | None:
        """Seconds left: the mean duration of finished jobs times the jobs left, spread over
        as many as have run at once."""
        took = [self.ended[k] - self.started[k] for k in self.ended if k in self.started]
        left = sum(1 for s in self.state.values() if s in ("queued", "running"))
        if not took or not left:
            return None
        return sum(took) / len(took) * left / self.most_running

    def render(self) -> Table:
        counts = {
            s: sum(1 for v in self.state.values() if v == s)
            for s in ("queued", "running", "done", "failed")
        }
        head = " · ".join(f"{k} {v}" for k, v in counts.items())
        head += f" · elapsed {_clock(time.monotonic() - self.t0)}"
        if self.eta() is not None:
            head += f" · ETA {_clock(self.eta())}"
        if self.packing:
            head += f" · {self.packing}"
        t = Table(title=head, title_justify="left")
        for col in ("job", "method", "protocol", "train on", "evaluate", "seed", "state", "time"):
            t.add_column(col)
        t.add_column("")
        now = time.monotonic()
        for jid, j in self.jobs.items():
            state = self.state[jid]
            evals = ",".join(f"{e.dataset}/{e.subsample}" for e in j.evals)
            train = "–"
            if j.trains:
                train = f"{j.train.dataset}/{j.train.subsample}"
                train += f" k{j.train.shots}" if j.train.shots else ""
            took = None
            if jid in self.started:
                took = self.ended.get(jid, now) - self.started[jid]
            t.add_row(
                jid[:10], j.method, j.protocol, train, evals, str(j.seed),
                f"[{STYLE[state]}]{state}[/]", _clock(took), self.detail[jid],
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
def live(table: JobTable | TrialTable, tracker: Any = None) -> Iterator[Any]:
    """Show `table` live while the block runs; yields the event sink that updates it (and feeds
    the experiment tracker, when there is one)."""
    items = table.jobs if isinstance(table, JobTable) else {t.key: t for t in table.sweep.trials}
    with Live(
        table.render(), console=console, auto_refresh=False, transient=not console.is_terminal
    ) as view:

        def on_event(key: str, state: str, info: dict) -> None:
            table.event(key, state, info)
            view.update(table.render(), refresh=True)
            if tracker is not None and key in items:
                feed = tracker.job_event if isinstance(table, JobTable) else tracker.trial_event
                feed(items[key], state, info)

        yield on_event
    console.print(table.render())
    if tracker is not None:
        console.print(f"tracked in {tracker.kind}: {tracker.where}", highlight=False)
