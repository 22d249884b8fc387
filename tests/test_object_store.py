"""Results on an object store: a smoke run that fails a job, then `--resume`, `results query` and
`report`, with the results root on an S3-compatible server started here (moto, on loopback)."""

import pytest
from typer.testing import CliRunner

from dplbench import storage
from dplbench.cli import app
from dplbench.data.tario import iter_samples
from dplbench.data.view import DatasetView
from dplbench.plan.config import parse_overrides
from dplbench.plan.suites import load_suite
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.prepare import ensure_synthetic
from tests.conftest import s3_bucket

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
ray = pytest.importorskip("ray")
pytest.importorskip("moto.server")

BUCKET = "dplbench-results"


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    bucket = s3_bucket(BUCKET)  # before Ray starts: its workers inherit the endpoint
    ray.shutdown()
    ray.init(address="local", num_cpus=2, log_to_driver=False)
    yield bucket
    ray.shutdown()


def test_smoke_run_resume_query_and_report_on_an_object_store(tmp_path, s3):
    shards = tmp_path / "shards"
    ensure_synthetic(str(shards))
    res = f"{s3}/team/results"
    over = ["optim.epochs=2"]
    (coop, zs) = load_suite(
        "smoke", {"methods": ["coop", "zsclip"], "seeds": [1], "overrides": parse_overrides(over)}
    ).jobs
    args = ["run", "--suite", "smoke", "--methods", "coop,zsclip", "--seeds", "1"]
    args += ["--data", str(shards), "--results", res, "--loader-workers", "0", *over]
    first = CliRunner().invoke(app, args, env={"DPLBENCH_FAIL_JOB": f"{coop.id}@1"})
    assert first.exit_code == 1
    assert f"failed {coop.id}" in first.stderr and f"(log: {res}/logs/" in first.stderr
    assert not (tmp_path / "s3:").exists()  # nothing went to a local folder named like the URI
    # zsclip's rows, compacted at the run's end: the compacted set and its manifest, no job file
    (rows,) = storage.listdir(f"{res}/rows", "*.parquet", recursive=True)
    assert "/suite=smoke/method=zsclip/compacted-" in rows
    assert storage.listdir(f"{res}/rows", "*.manifest.json", recursive=True)
    # the job's checkpoint (a plain trial's) and Ray Tune's experiment state are there too
    assert storage.listdir(f"{res}/checkpoints", "epoch_000.pt", recursive=True)
    assert storage.listdir(f"{res}/ray", "*.json", recursive=True)

    again = CliRunner().invoke(app, [*args, "--resume"])  # what it finds, it finds compacted
    assert again.exit_code == 0, again.output
    assert "1 jobs already had results; ran 1 failed, 0 stopped and 0 missing again" in again.stdout
    assert "results compacted: " in again.stdout
    rows = store.query(
        ResultsRoot(res), "SELECT job_id, subsample FROM results ORDER BY ALL"
    ).to_pylist()
    assert len(rows) == 4 and {r["job_id"] for r in rows} == {coop.id, zs.id}
    epochs = store.query(
        ResultsRoot(res),
        "SELECT epoch, run_status FROM epochs WHERE job_id = $j ORDER BY epoch",
        {"j": coop.id},
    ).to_pylist()
    assert epochs == [{"epoch": 0, "run_status": "failed"}, {"epoch": 1, "run_status": "done"}]
    status = store.query(ResultsRoot(res), "SELECT job_id, status FROM status").to_pylist()
    assert {s["status"] for s in status} == {"done"} and len(status) == 2

    query = CliRunner().invoke(
        app, ["results", "query", "SELECT count(*) AS n FROM rows", "--results", res]
    )
    assert query.exit_code == 0 and "4" in query.stdout, query.output
    report = CliRunner().invoke(app, ["report", "--suite", "smoke", "--results", res])
    assert report.exit_code == 0, report.output
    assert "Base-to-novel generalisation" in storage.read_text(f"{res}/reports/smoke/report.md")


def test_shards_on_an_object_store_read_like_local_ones(tmp_path, s3):
    shards = tmp_path / "shards"
    ensure_synthetic(str(shards))
    local = DatasetView.open(str(shards), "synthetic", "test").shard_urls[0]
    remote = f"{s3}/shards/synthetic/test/0.tar"
    storage.write(remote, open(local, "rb").read())
    keys = [s["__key__"] for s in iter_samples(local)]
    assert [s["__key__"] for s in iter_samples(remote)] == keys and keys
