"""The driver's status record (results/status.py): its writes do not grow with the run (changes
batched into small files, consolidated), and a reader always sees every job's newest state."""

import time
from types import SimpleNamespace

import pyarrow.parquet as pq

from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.results.status import StatusBook


def _jobs(n: int) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            id=f"job{i:05d}",
            method="coop",
            protocol="base2novel",
            seed=1,
            source=None,
            train=SimpleNamespace(dataset="dtd"),
        )  # fmt: skip
        for i in range(n)
    ]


def _status(root: ResultsRoot) -> dict[str, str]:
    rows = store.query(root, "SELECT job_id, status FROM status").to_pylist()
    assert len(rows) == len({r["job_id"] for r in rows})  # one row per job in the view
    return {r["job_id"]: r["status"] for r in rows}


def _files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "status").rglob("*.parquet"))


def test_writes_per_job_stay_small_and_readers_see_the_newest_state(tmp_path):
    root, jobs = ResultsRoot(tmp_path), _jobs(2000)
    book = StatusBook(root, "smoke", "run1", jobs, interval=3600, consolidate_every=8)
    assert book.writes == 1 and set(_status(root).values()) == {"queued"}
    for k, j in enumerate(jobs):  # what a driver says of each job: started, epochs, ended
        book.update(j.id, status="running")
        book.update(j.id, attempts=1)
        book.update(j.id, status="done" if k % 10 else "failed", error=None if k % 10 else "x")
        if k % 100 == 99:  # the timer's beat: what changed since the last write
            book.flush()
        if k == 1049:  # mid-run: the view shows every change written so far, and no later
            seen = _status(root)
            assert seen[jobs[990].id] == "failed" and seen[jobs[999].id] == "done"
            assert seen[jobs[1000].id] == "queued"  # changed after the last beat
    book.close()
    assert book.writes <= 1 + 20 + 1  # 22: not the 6,000 of a rewrite per change
    assert book.writes / len(jobs) < 0.02
    assert _files(tmp_path) == ["run1.parquet"]  # the small files are folded in, then removed
    final = _status(root)
    assert len(final) == 2000 and sum(s == "failed" for s in final.values()) == 200


def test_small_files_are_folded_into_the_runs_file_every_few(tmp_path):
    root, jobs = ResultsRoot(tmp_path), _jobs(6)
    book = StatusBook(root, "smoke", "run2", jobs, interval=3600, consolidate_every=3)
    for j in jobs[:2]:
        book.update(j.id, status="running")
        book.flush()
    assert _files(tmp_path) == [f"run2.00000{k}.parquet" for k in range(3)]  # all, then changes
    assert _status(root)[jobs[1].id] == "running"
    book.update(jobs[2].id, status="done")
    book.flush()  # the third write holds every job; the earlier files are removed after it
    assert _files(tmp_path) == ["run2.000003.parquet"]
    assert [_status(root)[j.id] for j in jobs] == ["running", "running", "done", *["queued"] * 3]
    assert pq.read_table(tmp_path / "status/suite=smoke/run2.000003.parquet").num_rows == 6
    book.close()
    assert _files(tmp_path) == ["run2.parquet"]


def test_the_timer_writes_changes_without_being_asked(tmp_path):
    root, jobs = ResultsRoot(tmp_path), _jobs(3)
    book = StatusBook(root, "smoke", "run3", jobs, interval=0.05)
    book.update(jobs[0].id, status="running")
    deadline = time.monotonic() + 30
    while _status(root)[jobs[0].id] != "running":
        assert time.monotonic() < deadline, "no write within 30 s"
        time.sleep(0.05)
    book.close()
    assert _files(tmp_path) == ["run3.parquet"] and _status(root)[jobs[0].id] == "running"
