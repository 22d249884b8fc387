"""`dplbench results compact` (results/compact.py, results/catalog.py): every view reads the same
before and after a compaction, during one that a writer races, and after one killed at each of its
steps; the next compaction finishes the work; on a local root and on an object store (moto)."""

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from dplbench import storage
from dplbench.cli import app
from dplbench.errors import ConfigError
from dplbench.results import catalog, compact, store
from dplbench.results.root import ResultsRoot
from dplbench.results.status import StatusBook
from dplbench.run.resume import completed_runs, ended_job_states
from tests.conftest import s3_bucket

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
VIEWS = ("rows", "results", "epochs", "status", "status_all")


class Killed(BaseException):
    """The process dying at a given point (a BaseException: nothing on the way catches it)."""


def _row(job, run, suite, method, acc, minutes, subsample="base"):
    r = dict.fromkeys(store.ROW_SCHEMA.names)
    r.update(job_id=job, run_id=run, suite=suite, method=method, protocol="base2novel",
             dataset="dtd", subsample=subsample, split="test", seed=1, accuracy=acc,
             correct=int(acc), total=100, params="{}",
             created_at=T0 + timedelta(minutes=minutes))  # fmt: skip
    return r


def _epochs(job, run, terms):
    return [
        {"job_id": job, "run_id": run, "epoch": e, "lr": 0.1, "loss": 1.0 / (e + 1),
         "samples": 8, "seconds": 0.5, "val_accuracy": None, "run_status": "done",
         **{f"loss_{t}": 0.1 * e for t in terms}}
        for e in range(2)
    ]  # fmt: skip


def _write(root: ResultsRoot, job: int, run: str = "r1", minutes: int = 0, acc=None) -> None:
    """One job run's rows and epochs; methods differ in their loss terms (epochs' columns)."""
    method, suite = ("coop", "dpl", "kgcoop")[job % 3], ("smoke", "base2novel")[job % 2]
    jid = f"job{job:04d}"
    acc = float(job) if acc is None else acc
    store.write_rows(
        root, [_row(jid, run, suite, method, acc, minutes, s) for s in ("base", "novel")]
    )
    terms = {"coop": [], "dpl": ["ce", "rer"], "kgcoop": ["kg"]}[method]
    store.write_epochs(root, suite, method, _epochs(jid, run, terms))


def _status(root: ResultsRoot, run: str, n: int, done: int) -> None:
    jobs = [SimpleNamespace(id=f"job{i:04d}", method="coop", protocol="base2novel", seed=1,
                            source=None, train=SimpleNamespace(dataset="dtd")) for i in range(n)]  # fmt: skip
    book = StatusBook(root, "smoke", run, jobs, interval=3600)
    for j in jobs[:done]:
        book.update(j.id, status="done")
    book.update(jobs[-1].id, status="failed", error="x")
    book.close()


def make_root(path) -> ResultsRoot:
    root = ResultsRoot(path)
    for i in range(12):
        _write(root, i)
    _write(root, 4, run="r2", minutes=5, acc=99.0)  # a rerun: the `results` view takes it
    _status(root, "s1", 6, 2)
    _status(root, "s2", 6, 5)  # newer states of the same jobs
    return root


def snapshot(root: ResultsRoot) -> dict:
    return {
        v: sorted(map(repr, store.query(root, f"SELECT * FROM {v}").to_pylist())) for v in VIEWS
    }


def files(root: ResultsRoot) -> list[str]:
    return sorted(
        p[len(root.path) :]
        for t in store.TABLES
        for p in storage.listdir(root.table(t), recursive=True)
    )


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "results")
    request.getfixturevalue("s3_endpoint")
    name = f"compact-{request.node.name.split('[')[0][5:30].replace('_', '-')}-{id(request) % 9999}"
    return s3_bucket(name.lower()) + "/results"


def test_every_view_reads_the_same_after_compaction_and_it_is_idempotent(where):
    root = make_root(where)
    before, runs = snapshot(root), completed_runs(root)
    assert len(files(root)) == 2 * 13 + 2  # a file per job run and table, each driver run's status
    done = compact.compact(root)
    assert snapshot(root) == before
    assert completed_runs(root) == runs and runs["job0004"] == "r2"  # what --resume finds
    assert ended_job_states(root) == {"job0005": "failed"}
    # one data file and its manifest per partition: 2 suites x 3 methods x 2 tables, 1 status
    after = files(root)
    assert len(after) == 2 * (6 + 6 + 1) and done.files_in == 28 and done.removed == 28
    manifests = [p for p in after if p.endswith(catalog.MANIFEST)]
    m = json.loads(storage.read_text(root.path + manifests[0]))
    assert m["format"] == catalog.FORMAT and m["rows"] > 0 and m["sources"]
    again = compact.compact(root)
    assert again.folders == [] and files(root) == after  # nothing to do, nothing touched
    # a new run's files are read beside the compacted ones, then folded in
    _write(root, 3, run="r3", minutes=9, acc=42.0)
    grown = snapshot(root)
    assert "42.0" in "".join(grown["results"]) and len(grown["rows"]) == len(before["rows"]) + 2
    compact.compact(root)
    assert snapshot(root) == grown and len(files(root)) == len(after)


@pytest.mark.parametrize("step", ["data", "manifest", "removing"])
def test_a_compaction_killed_at_any_step_reads_the_same_and_the_next_one_finishes(
    where, step, monkeypatch
):
    root = make_root(where)
    before, layout = snapshot(root), None
    removed = []

    def kill(*a, **k):
        raise Killed(step)

    def kill_third(path):
        if len(removed) == 2:
            raise Killed(step)
        removed.append(path)
        storage.remove(path)

    if step == "data":  # the compacted file is written, its manifest is not
        monkeypatch.setattr(compact, "_write_manifest", kill)
    elif step == "manifest":  # the manifest is published, no source is removed yet
        monkeypatch.setattr(compact, "_remove", kill)
    else:  # two sources removed, then the end
        monkeypatch.setattr(compact, "_remove_file", kill_third)
    with pytest.raises(Killed):
        compact.compact(root)
    leftovers = files(root)
    assert any(catalog.COMPACTED in p for p in leftovers)  # it got that far
    assert snapshot(root) == before  # no row lost, none read twice
    monkeypatch.undo()
    compact.compact(root)
    assert snapshot(root) == before
    layout = files(root)
    assert len(layout) == 2 * (6 + 6 + 1)  # finished: no source, orphan or old set is left
    assert compact.compact(root).folders == []


def test_files_published_during_a_compaction_are_read_once(where, monkeypatch):
    root = make_root(where)
    real = compact._write_manifest
    written = []

    def racing_writer(path, manifest):  # a job finishing between the read and the manifest
        if not written:
            _write(root, 0, run="late", minutes=30, acc=77.0)
            written.append(1)
        real(path, manifest)

    monkeypatch.setattr(compact, "_write_manifest", racing_writer)
    compact.compact(root)
    late = store.query(root, "SELECT * FROM rows WHERE run_id = 'late'").to_pylist()
    assert len(late) == 2  # read once: it is no manifest's source, and it was not removed
    res = store.query(root, "SELECT accuracy FROM results WHERE job_id = 'job0000'").to_pylist()
    assert {r["accuracy"] for r in res} == {77.0}
    grown = snapshot(root)
    monkeypatch.undo()
    compact.compact(root)
    assert snapshot(root) == grown


def test_keep_sources_leaves_them_unread_and_a_later_compaction_removes_them(tmp_path):
    root = make_root(tmp_path)
    before, n = snapshot(root), len(files(root))
    compact.compact(root, keep_sources=True)
    assert snapshot(root) == before and len(files(root)) == n + 2 * 13
    _write(root, 7, run="r9", minutes=50)  # a new file beside the kept ones
    grown = snapshot(root)
    compact.compact(root, keep_sources=True)
    assert snapshot(root) == grown  # the kept files of the first set are not read twice
    compact.compact(root)
    assert snapshot(root) == grown and len(files(root)) == 2 * 13


def test_a_manifest_naming_a_path_outside_its_folder_is_refused(tmp_path):
    root = make_root(tmp_path)
    compact.compact(root, tables=("rows",))
    path = next(p for p in storage.listdir(root.table("rows"), f"*{catalog.MANIFEST}", True))
    m = json.loads(storage.read_text(path))
    m["sources"]["../../status/suite=smoke/s1.parquet"] = 1
    storage.write(path, json.dumps(m))
    with pytest.raises(ConfigError, match="names a path outside its folder"):
        store.query(root, "SELECT count(*) FROM rows")


def test_the_command_compacts_and_a_second_call_has_nothing_to_do(tmp_path):
    make_root(tmp_path)
    first = CliRunner().invoke(app, ["results", "compact", "--results", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "suite=smoke/method=coop" in first.stdout
    second = CliRunner().invoke(app, ["results", "compact", "--results", str(tmp_path)])
    assert second.exit_code == 0 and "nothing to compact" in second.stdout
    bad = CliRunner().invoke(
        app, ["results", "compact", "--results", str(tmp_path), "--table", "x"]
    )
    assert bad.exit_code == 2 and "--table 'x'" in bad.output


@pytest.mark.parametrize("args", [["results", "query", "SELECT 1"], ["results", "compact"]])
def test_a_bucket_that_does_not_exist_is_one_line(s3_endpoint, args):
    out = CliRunner().invoke(app, [*args, "--results", "s3://no-such-bucket/results"])
    assert out.exit_code == 2, out.output
    assert out.output.strip() == (
        "error: no results under s3://no-such-bucket/results (it does not exist); give the "
        "--results root a run wrote to"
    )


def test_a_reader_that_listed_before_a_compaction_removed_its_files_reads_again(where, monkeypatch):
    root = make_root(where)
    before = snapshot(root)
    real, raced = catalog.list_table, []

    def list_then_compact(folder):  # the listing is taken, then a compaction finishes
        files = real(folder)
        if not raced:
            raced.append(folder)
            compact.compact(root)
        return files

    monkeypatch.setattr(catalog, "list_table", list_then_compact)
    rows = store.query(root, "SELECT * FROM rows")  # its first listing is stale by the read
    assert raced and sorted(map(repr, rows.to_pylist())) == before["rows"]
