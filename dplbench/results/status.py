"""The job-status table: what every job of a driver run is doing, written as it changes.

    R/status/suite=<suite>/<run_id>.<seq>.parquet    while the run goes: what changed, or all
    R/status/suite=<suite>/<run_id>.parquet          when it ended: one row per job of the run

A write's cost must not grow with the run: a driver of 10^4 jobs whose every state change
rewrote all of its rows would write 4·10^4 files of 10^4 rows. So changes are batched: at most
every `interval` seconds the jobs that changed since the last write go to a small new file, and
every `consolidate_every`-th write holds every job instead, after which the earlier files are
removed; when the run ends its whole state goes to `<run_id>.parquet` and the numbered files
are removed. Every name is written once (a compaction, results/compact.py, may hold any of them)
and every file is published whole; a reader that sees a job's row twice sees it equal or older,
and the `status` view of `dplbench results query` keeps the newest row of each job (by
updated_at) across runs and files, as the `results` view does for rows. A reader sees the
driver's state at most `interval` seconds late.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from dplbench import storage
from dplbench.results.root import ResultsRoot
from dplbench.results.store import STATUS_SCHEMA, write_parquet


@dataclass
class JobStatus:
    job_id: str
    run_id: str
    method: str
    protocol: str
    dataset: str
    seed: int
    status: str = "queued"
    attempts: int = 0
    error: str | None = None
    log: str | None = None
    node: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime | None = None


class StatusBook:
    """The driver's record of its run's jobs. `update` is called from Tune's callback thread
    and the driver's; it changes memory only. A timer thread writes what changed (module
    docstring); `close` writes the run's whole file and stops it."""

    def __init__(
        self,
        root: ResultsRoot,
        suite: str,
        run_id: str,
        jobs: Iterable[Any],
        interval: float = 2.0,
        consolidate_every: int = 64,
    ) -> None:
        self.path = root.status_file(suite, run_id)
        self.jobs: dict[str, JobStatus] = {}
        for j in jobs:
            dataset = j.train.dataset if j.source is None else j.evals[0].dataset
            self.jobs[j.id] = JobStatus(j.id, run_id, j.method, j.protocol, dataset, j.seed)
        self.interval, self.consolidate_every = interval, consolidate_every
        self.writes = 0  # files written (tools/bench/bench_driver.py counts them)
        self._dirty: set[str] = set()
        self._parts: list[str] = []  # the numbered files written so far
        self._seq = -1
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if self.jobs:
            with self._lock:
                self._write_whole()
            self._thread = threading.Thread(target=self._flusher, name="status", daemon=True)
            self._thread.start()

    def update(self, job_id: str, **fields: Any) -> None:
        if job_id not in self.jobs:
            return
        now = datetime.now(timezone.utc)
        with self._lock:
            st = self.jobs[job_id]
            status = fields.get("status")
            if status == "running":
                st.started_at = st.started_at or now
                st.ended_at = None  # running again (a job waited for after a lease)
            if status in ("done", "failed", "stopped") and st.ended_at is None:
                st.ended_at = now  # when it ended, not when the driver last said so
            for k, v in fields.items():
                if v is not None:
                    setattr(st, k, v)
            st.updated_at = now
            self._dirty.add(job_id)

    def flush(self) -> None:
        """Write what changed since the last write (a small file), now."""
        with self._lock:
            self._write_changes()

    def close(self) -> None:
        """The run's whole file, every change in it; the numbered files removed; the timer
        stopped."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.jobs and not storage.exists(self.path):  # once: every name is written once
                self._write_whole(final=True)

    def _flusher(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush()

    def _rows(self, ids: Iterable[str]) -> pa.Table:
        now = datetime.now(timezone.utc)
        rows = [{**asdict(s), "updated_at": s.updated_at or now} for s in map(self.jobs.get, ids)]
        return pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)

    def _write_changes(self) -> None:
        if not self._dirty:
            return
        if len(self._parts) >= self.consolidate_every:  # the last whole one and the changes
            self._write_whole()
            return
        self._write(self._part(), sorted(self._dirty))

    def _write_whole(self, final: bool = False) -> None:
        earlier, self._parts = self._parts, []
        self._write(self.path if final else self._part(), self.jobs)
        for path in earlier:  # removed after the whole state is published
            storage.remove(path)

    def _part(self) -> str:
        self._seq += 1
        return self.path.removesuffix(".parquet") + f".{self._seq:06d}.parquet"

    def _write(self, path: str, ids: Iterable[str]) -> None:
        write_parquet(self._rows(ids), path)
        self.writes += 1
        self._dirty.clear()
        if path != self.path:
            self._parts.append(path)
