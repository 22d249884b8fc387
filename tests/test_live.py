"""The live job table (cli/live.py) at a lab's scale: its counts follow every event without
recounting, and beyond ROWS jobs it shows the lines that matter (failed, running, latest ended)."""

import io
from collections import Counter
from types import SimpleNamespace

from rich.console import Console

from dplbench.cli import live
from dplbench.cli.live import JobTable
from dplbench.cli.live import live as live_view
from dplbench.run.events import JobEnded, JobStarted


def _jobs(n: int) -> list[SimpleNamespace]:
    ev = SimpleNamespace(dataset="dtd", subsample="base")
    train = SimpleNamespace(dataset="dtd", subsample="base", shots=16)
    return [
        SimpleNamespace(id=f"job{i:05d}", method="coop", protocol="base2novel", evals=[ev],
                        trains=True, train=train, seed=i, params={}, epochs=2)
        for i in range(n)
    ]  # fmt: skip


def _lines(table: JobTable) -> str:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(table.render())
    return out.getvalue()


def test_counts_follow_the_events_and_the_lines_that_matter_are_shown():
    jobs = _jobs(1000)
    table = JobTable(jobs)
    for k, j in enumerate(jobs[:700]):
        table.event(JobStarted(j.id))
        if k < 690:  # ten still running
            status = "failed" if k in (3, 500) else "done"
            table.event(JobEnded(j.id, status, error="boom" if status == "failed" else None))
    assert table.counts == Counter(table.state.values())
    assert table.counts["done"] == 688 and table.counts["running"] == 10
    assert table.most_running == 10
    text = _lines(table)
    assert "queued 300 · running 10 · done 688 · failed 2" in text
    shown = [line for line in text.splitlines() if " coop " in line]
    assert len(shown) == live.ROWS
    assert "job00003" in text and "job00500" in text  # the failed are always there
    assert all(f"job{k:05d}" in text for k in range(690, 700))  # so are the running
    assert "job00689" in text and "job00001" not in text  # the latest ended; not the oldest
    assert f"{1000 - live.ROWS:,} more jobs not shown" in text


def test_a_small_run_shows_every_job_and_the_final_table_once_in_a_log():
    jobs = _jobs(5)
    out = io.StringIO()
    live.console = Console(file=out, width=250, color_system=None)  # a log, not a terminal
    try:
        with live_view(JobTable(jobs)) as on_event:
            for j in jobs:
                on_event(JobStarted(j.id))
                on_event(JobEnded(j.id, "done"))
    finally:
        from dplbench.cli.common import console

        live.console = console
    text = out.getvalue()
    assert text.count("done 5") == 1 and all(j.id in text for j in jobs)
    assert "more jobs not shown" not in text
