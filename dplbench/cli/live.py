"""The live tables of `run` / `ablate` (one line per job) and `tune` (one line per trial), fed by
the typed events of `run.execute` (run/events.py), and the plan views of a dry run (table, or
JSON per job)."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from rich.live import Live
from rich.table import Table

from dplbench.cli.common import console
from dplbench.run.events import (
    EpochDone,
    Event,
    JobEnded,
    JobStarted,
    PlanChecked,
    StopAsked,
    TrialEnded,
    TrialProgress,
    TrialStarted,
)

ROWS = 60  # job lines a live table shows at most (the title counts every job)
REFRESH_HZ = 4
STYLE = {"done": "green", "failed": "red", "running": "yellow", "stopped": "cyan", "queued": "dim",
         "not started": "dim", "run": "yellow", "skip": "green", "elsewhere": "cyan"}  # fmt: skip


def clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def scores(accuracy: dict | None) -> str:
    """base / novel / HM for base-to-novel jobs, else the accuracy of each evaluated set."""
    if not accuracy:
        return ""
    if {"base", "novel"} <= set(accuracy):
        from dplbench.results.aggregate import harmonic_mean

        b, n = accuracy["base"], accuracy["novel"]
        return f"base {b:.1f}  novel {n:.1f}  HM {harmonic_mean([b, n]):.1f}"
    return "  ".join(f"acc {v:.1f}" for v in accuracy.values())


class JobTable:
    """One line per job (state, elapsed time, epoch and loss while it trains, its scores once
    done, its one-line cause once failed), and the suite's elapsed time, ETA and packing."""

    def __init__(self, jobs, packing: str = "", groups: dict[str, str] | None = None) -> None:
        self.packing = packing
        self.groups = groups or {}  # job id -> its fused group's label
        self.jobs = {j.id: j for j in jobs}
        self.state = {j.id: "queued" for j in jobs}
        self.counts = Counter(self.state.values())  # kept with `state`: no O(jobs) per event
        self.lock = threading.Lock()  # events arrive on the driver's threads, redraws on Live's
        self.detail = {j.id: "" for j in jobs}
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.most_running = 1
        self.stopping: str | None = None  # the signal that asked the run to stop

    def _set(self, job_id: str, state: str) -> None:
        self.counts[self.state[job_id]] -= 1
        self.counts[state] += 1
        self.state[job_id] = state

    def event(self, event: Event) -> None:
        with self.lock:
            self._event(event)

    def _event(self, event: Event) -> None:
        if isinstance(event, PlanChecked):  # how jobs are packed and fused; what --resume keeps
            self.packing = event.checks.packing
            self.groups = event.checks.group_of()
            for jid, run in event.checks.kept.items():
                if jid in self.state:
                    self._set(jid, "done")
                    self.detail[jid] = f"earlier run {run}".strip()
            return
        if isinstance(event, StopAsked):
            self.stopping = event.signal
            return
        job_id = getattr(event, "job_id", None)
        if job_id not in self.jobs:
            return
        j, now = self.jobs[job_id], time.monotonic()
        if isinstance(event, EpochDone):
            detail = f"epoch {event.epoch + 1}/{j.epochs}"
            if event.loss is not None:
                detail += f"  loss {event.loss:.3f}"
            self.detail[job_id] = detail
        elif isinstance(event, JobStarted):
            self._set(job_id, "running")
            self.started.setdefault(job_id, now)
            self.most_running = max(self.most_running, self.counts["running"])
        elif isinstance(event, JobEnded):
            self._set(job_id, event.status)
            self.ended[job_id] = now
            if event.status == "done":
                self.detail[job_id] = scores(event.accuracy)
            elif event.error:
                self.detail[job_id] = event.error[:80]

    def planned(self, checks) -> None:
        """A dry run's view: each job `run`, `skip` (--resume: its rows are there) or
        `elsewhere` (another driver holds it)."""
        held = {j.id for j in checks.units.held}
        for jid in self.state:
            run = checks.kept.get(jid)
            self._set(jid, "skip" if run is not None else "elsewhere" if jid in held else "run")
            self.detail[jid] = f"rows from run {run}" if run else ""

    def eta(self) -> float | None:
        """Seconds left: the mean duration of finished jobs times the jobs left, spread over
        as many as have run at once."""
        took = [self.ended[k] - self.started[k] for k in self.ended if k in self.started]
        left = sum(1 for s in self.state.values() if s in ("queued", "running"))
        if not took or not left:
            return None
        return sum(took) / len(took) * left / self.most_running

    def shown(self) -> list[str]:
        """The jobs that get a line: all of them up to ROWS; beyond, the failed and stopped,
        the running, the latest ended, then the next queued, at most ROWS, in plan order."""
        if len(self.jobs) <= ROWS:
            return list(self.jobs)
        order = {jid: k for k, jid in enumerate(self.jobs)}
        bad = [j for j, s in self.state.items() if s in ("failed", "stopped")]
        running = [j for j, s in self.state.items() if s == "running"]
        latest = sorted(self.ended, key=self.ended.get, reverse=True)
        queued = [j for j, s in self.state.items() if s not in ("failed", "stopped", "running")]
        pick = dict.fromkeys([*bad, *running, *latest, *queued][:ROWS])
        return sorted(pick, key=order.get)

    def render(self) -> Table:
        with self.lock:
            return self._render()

    def _render(self) -> Table:
        states = ("queued", "running", "done", "failed", "stopped", "not started", *STYLE)
        counts = {s: self.counts[s] for s in dict.fromkeys(states)}
        planned = any(counts[s] for s in ("run", "skip", "elsewhere"))
        shown = () if planned else states[:4]  # a live table always counts these four
        head = " · ".join(f"{k} {v}" for k, v in counts.items() if v or k in shown)
        if not planned:
            head += f" · elapsed {clock(time.monotonic() - self.t0)}"
        if self.eta() is not None:
            head += f" · ETA {clock(self.eta())}"
        if self.packing:
            head += f" · {self.packing}"
        if self.stopping and any(s in ("queued", "running") for s in self.state.values()):
            head += f" · stopping ({self.stopping}): Ctrl-C again to quit at once"
        t = Table(title=head, title_justify="left")
        # An ablation's jobs differ by their variant: it is a column, or rows look alike.
        variants = any("variant" in j.params for j in self.jobs.values())
        cols = ("job", "method", *(("variant",) if variants else ()), "protocol", "train on",
                "evaluate", "seed", "fused", "state", "time")  # fmt: skip
        for col in (*cols, "progress / result"):
            t.add_column(col)
        now = time.monotonic()
        shown = self.shown()
        if len(shown) < len(self.jobs):
            t.caption = f"{len(self.jobs) - len(shown):,} more jobs not shown (counted above)"
        for jid in shown:
            j, state = self.jobs[jid], self.state[jid]
            evals = ",".join(f"{e.dataset}/{e.subsample}" for e in j.evals)
            train = "–"
            if j.trains:
                train = f"{j.train.dataset}/{j.train.subsample}"
                train += f" k{j.train.shots}" if j.train.shots else ""
            took = None
            if jid in self.started:
                took = self.ended.get(jid, now) - self.started[jid]
            variant = (str(j.params.get("variant", "–")),) if variants else ()
            t.add_row(
                jid[:10], j.method, *variant, j.protocol, train, evals, str(j.seed),
                self.groups.get(jid, ""), f"[{STYLE[state]}]{state}[/]", clock(took),
                self.detail[jid],
            )  # fmt: skip
        return t


class TrialTable:
    """One line per sweep trial, updated from trial events."""

    def __init__(self, plan) -> None:
        self.sweep = plan.sweep
        self.epochs = max(j.epochs for j in plan.jobs)
        self.state = {t.key: ("queued", "", None) for t in self.sweep.trials}

    def event(self, event: Event) -> None:
        key = getattr(event, "trial", None)
        if key not in self.state:
            return
        state, epoch, obj = self.state[key]
        if isinstance(event, TrialStarted):
            state = "running"
        elif isinstance(event, TrialProgress):
            epoch = f"{event.epoch}/{self.epochs}"
            obj = event.objective if event.objective is not None else obj
        elif isinstance(event, TrialEnded):
            state = event.status
            result = event.result
            if result is not None:
                epoch = f"{result.epoch}/{self.epochs}" if result.epoch else epoch
                obj = result.objective if result.objective is not None else obj
            if event.status == "failed" and event.error:
                epoch = event.error[:60]
        self.state[key] = (state, epoch, obj)

    def planned(self, checks) -> None:
        """A dry run's view: each trial `run`, or `skip` (--resume: its record is there)."""
        for t in self.sweep.trials:
            kept = all(j.id in checks.kept for j in t.jobs)
            self.state[t.key] = ("skip" if kept else "run", "", None)

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
    """Show `table` live while the block runs; yields the event sink that updates it. The table
    appears with the first event (a plan refused before it runs prints its one line alone); the
    final table stays on screen (a terminal) or is printed once when the block ends (a log)."""
    view: Live | None = None

    def on_event(event: Event) -> None:
        nonlocal view
        table.event(event)
        if view is None:  # then Live redraws it REFRESH_HZ times a second: never per event,
            # which at thousands of jobs would redraw the table thousands of times
            view = Live(get_renderable=table.render, console=console,
                        refresh_per_second=REFRESH_HZ, transient=False)  # fmt: skip
            view.start()

    try:
        yield on_event
    finally:
        if view is not None:
            view.refresh()
            view.stop()
            if not console.is_terminal:  # Live ends a terminal's table with a newline, a log's not
                console.line()


def recipe_view(job, checks=None) -> dict:
    """One job as the recipe view shows it: what it trains on, its full resolved config, and how
    it trains (its fused group, or why it trains alone)."""
    from dpl.typed import to_dict

    group = next((g for g in (checks.groups if checks else ()) if job in g.jobs), None)
    return {
        "fused_with": [j.id for j in group.jobs if j.id != job.id] if group else [],
        # --resume: a job whose rows are there is skipped; they are the rows of this run
        "resume": "skip" if checks and job.id in checks.kept else "run",
        "rows_from_run": checks.kept.get(job.id) if checks else None,
        "solo_reason": checks.solo.get(job.id) if checks and not group else None,
        "job_id": job.id,
        "method": job.method,
        "protocol": job.protocol,
        "dataset": job.train.dataset,
        "subsample": job.train.subsample,
        "shots": job.train.shots,
        "imbalance": job.train.imbalance,
        "seed": job.seed,
        "evaluates": [f"{e.dataset}/{e.subsample}" for e in job.evals],
        "source_job_id": job.source,
        "trains": job.trains,
        "params": job.params,
        "llm": job.llm,
        "config": to_dict(job.config),
    }


def print_plan(table: JobTable | TrialTable, jobs, checks, what: str, fmt: str) -> None:
    """A dry run: every planned job as JSON (one object per line), or the table, what it would
    run and the pre-run checks' notes."""
    if fmt == "json":
        for j in jobs:
            sys.stdout.write(json.dumps(recipe_view(j, checks), sort_keys=True) + "\n")
        return
    table.event(PlanChecked(what, checks))
    table.planned(checks)
    console.print(table.render())
    console.print(f"{what}; nothing was run (--dry-run)", highlight=False)
    for line in checks.notes:
        console.print(line, highlight=False, soft_wrap=True)
