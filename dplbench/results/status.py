"""The job-status table: what every job of a driver run is doing, written as it changes.

    R/status/suite=<suite>/<run_id>.parquet    one row per job of that run

The driver rewrites its run's file (atomically) whenever a job changes state, so a reader always
sees a whole table: queued, running, done, failed or stopped, with attempts, the error line, the
log path, start and end times and the node. The `status` view of `dplbench results query` keeps
the newest row of each job across runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

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
    and the driver's; each call rewrites the file under a lock."""

    def __init__(self, root: ResultsRoot, suite: str, run_id: str, jobs: Iterable[Any]) -> None:
        self.path = root.status_file(suite, run_id)
        self.jobs: dict[str, JobStatus] = {}
        for j in jobs:
            dataset = j.train.dataset if j.source is None else j.evals[0].dataset
            self.jobs[j.id] = JobStatus(j.id, run_id, j.method, j.protocol, dataset, j.seed)
        self._lock = threading.Lock()
        if self.jobs:
            self.flush()

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
            self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        now = datetime.now(timezone.utc)
        rows = [{**asdict(s), "updated_at": s.updated_at or now} for s in self.jobs.values()]
        write_parquet(pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), self.path)
