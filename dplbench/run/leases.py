"""Per-job leases: two drivers on one results root never both train the same job unnoticed.

    R/leases/<job_id>.json    {"owner": "<host>:<pid>:<run_id>", "host", "pid", "since", ...}

A driver takes a job's lease before it runs the job (an exclusive create), renews it while the
job runs (the file's mtime, every `timeout / 3`), and removes it when the job ends. A lease is
stale when its renewals stopped for longer than `timeout`, or when its owner ran on this host and
its process is gone; a stale lease is taken over. A live one held by another driver means the job
is running elsewhere: the caller skips it, or waits for it (`dplbench run --on-lease`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dplbench import storage
from dplbench.results.root import ResultsRoot

DEFAULT_TIMEOUT = 300.0  # seconds without renewal after which a lease is stale


@dataclass(frozen=True)
class Holder:
    owner: str
    host: str
    pid: int
    since: float

    def describe(self) -> str:
        return (
            f"{self.host}:{self.pid} since {time.strftime('%H:%M:%S', time.localtime(self.since))}"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Leases:
    """The leases one driver holds, renewed by a background thread until `release`d."""

    def __init__(self, root: ResultsRoot, run_id: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.root = root
        self.local = not root.is_uri
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{self.host}:{self.pid}:{run_id}"
        self.timeout = timeout
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, job_id: str) -> str:
        return self.root.lease(job_id)

    def _record(self) -> str:
        return json.dumps(
            {"owner": self.owner, "host": self.host, "pid": self.pid, "since": time.time()}
        )

    def holder(self, job_id: str) -> Holder | None:
        """Who holds the job's live lease (None: free or stale)."""
        path = self._path(job_id)
        try:
            d = json.loads(storage.read_text(path))
            age = time.time() - (storage.mtime(path) or 0.0)
        except (FileNotFoundError, OSError, ValueError):
            return None
        if age > self.timeout or (d.get("host") == self.host and not _alive(int(d["pid"]))):
            return None
        return Holder(d["owner"], d["host"], int(d["pid"]), float(d["since"]))

    def acquire(self, job_id: str) -> Holder | None:
        """Take the job's lease; returns None when taken, else the live holder. Locally an
        exclusive create decides between drivers starting at once; an object store has none, so
        there the lease is written and read back (the last writer wins, the other sees it)."""
        path = self._path(job_id)
        created = False
        if self.local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(self._record())
                created = True
        if not created:
            held = self.holder(job_id)
            if held is not None and held.owner != self.owner:
                return held
            storage.write(path, self._record())  # free, stale or ours: take it (over)
            time.sleep(0.05)  # a driver taking it at the same moment: the last write wins
            current = self.holder(job_id)
            if current is not None and current.owner != self.owner:
                return current
        with self._lock:
            self.held.add(job_id)
        self._start()
        return None

    def release(self, job_id: str) -> None:
        with self._lock:
            if job_id not in self.held:
                return
            self.held.discard(job_id)
        held = self.holder(job_id)
        if held is None or held.owner == self.owner:
            storage.remove(self._path(job_id))

    def release_all(self) -> None:
        for job_id in list(self.held):
            self.release(job_id)
        self._stop.set()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew, daemon=True)
            self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.timeout / 3):
            with self._lock:
                held = list(self.held)
            for job_id in held:
                path = self._path(job_id)
                try:
                    if self.local:
                        os.utime(path)
                    else:
                        storage.write(path, storage.read_bytes(path))
                except (FileNotFoundError, OSError):
                    pass


def held_elsewhere(
    root: ResultsRoot, job_ids: list[str], timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Holder]:
    """The jobs whose live lease another driver holds now, read without taking any (a dry run;
    a run takes them with `Leases.acquire`)."""
    reader = Leases(root, "dry-run", timeout)
    found = {job_id: reader.holder(job_id) for job_id in job_ids}
    return {job_id: h for job_id, h in found.items() if h is not None}
