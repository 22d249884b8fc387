"""Per-sample outcomes (#29): one row per test sample of each job run, the same for a member of
a fused group as for its solo run, the same however the samples are split over ranks, and
readable as the `outcomes` view."""

import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.data.view import DatasetView
from dplbench.plan.plan import Plan
from dplbench.plan.suites import load_suite
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.driver import run_plan
from dplbench.run.evaluate import _pass
from dplbench.run.outcomes import merge
from dplbench.run.prepare import ensure_synthetic
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.worker import build_model


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def _jobs(seeds=(1, 2)):
    sel = {"methods": ("coop",), "seeds": seeds, "overrides": {"optim": {"epochs": 1}}}
    return list(load_suite("smoke", sel).jobs)


def _run(shards, results, jobs, fuse):
    settings = RunSettings.local(str(shards), str(results), loader_workers=0)
    return run_plan(
        Plan("smoke", tuple(jobs)), settings, ExecOptions.local(use_ray=False, fuse=fuse)
    )


def _outcomes(results) -> dict:
    """{(job_id, subsample): [(key, label, pred, correct), ...] in file order}."""
    rows = store.query(ResultsRoot(results), "SELECT * FROM outcomes").to_pylist()
    out: dict = {}
    for r in rows:
        out.setdefault((r["job_id"], r["subsample"]), []).append(
            (r["key"], r["label"], r["pred"], r["correct"])
        )
    return out


def test_outcomes_agree_with_the_counts_and_a_fused_member_with_its_solo_run(tmp_path, shards):
    jobs = _jobs()
    _run(shards, tmp_path / "fused", jobs, 2)
    _run(shards, tmp_path / "solo", jobs, 1)
    fused, solo = _outcomes(tmp_path / "fused"), _outcomes(tmp_path / "solo")
    assert fused == solo and len(fused) == 4  # 2 jobs x base, novel: member k kept as job k
    counts = {
        (r["job_id"], r["subsample"]): r
        for r in store.query(ResultsRoot(tmp_path / "fused"), "SELECT * FROM results").to_pylist()
    }
    for key, samples in fused.items():
        keys = [s[0] for s in samples]
        assert keys == sorted(set(keys))  # every sample once, in key order
        assert len(samples) == counts[key]["total"]
        assert sum(s[3] for s in samples) == counts[key]["correct"]
        assert all(s[3] == int(s[1] == s[2]) for s in samples)
    # The two seeds' models differ (or the comparison above would not tell members apart).
    a, b = (fused[(j.id, "base")] for j in jobs)
    assert [s[0] for s in a] == [s[0] for s in b] and a != b
    sql = "SELECT count(*) AS n, sum(correct) AS c FROM outcomes WHERE subsample = 'base'"
    res = CliRunner().invoke(app, ["results", "query", "--results", str(tmp_path / "fused"), sql])
    base = [counts[(j.id, "base")] for j in jobs]
    assert res.exit_code == 0 and str(sum(r["correct"] for r in base)) in res.output
    # One file per job run, where the rows' file is, under R/outcomes/.
    files = sorted((tmp_path / "fused" / "outcomes").rglob("*.parquet"))
    rows = sorted((tmp_path / "fused" / "rows").rglob("*.parquet"))
    assert [f.relative_to(tmp_path / "fused" / "outcomes") for f in files] == [
        f.relative_to(tmp_path / "fused" / "rows") for f in rows
    ]


def test_outcomes_do_not_depend_on_how_samples_are_split_over_ranks(shards, tmp_path):
    """Each rank's share, merged, is the single rank's pass: the same keys, labels, predictions."""
    (job,) = _jobs((1,))
    settings = RunSettings.local(str(shards), str(tmp_path), loader_workers=0)
    one = types.SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    model = build_model([job], settings, one)
    t = job.evals[0]
    view = DatasetView.open(settings.data, t.dataset, t.split, 8, 1, t.subsample)
    model.set_classes(view.classnames, view.template, view.dataset)
    model.eval()
    whole = _pass(model, view, settings, one)[3].member(0)
    parts = []
    for rank in (0, 1, 2):
        ctx = types.SimpleNamespace(rank=rank, world_size=3, device=torch.device("cpu"))
        parts.append(_pass(model, view, settings, ctx)[3].member(0))
    assert all(len(p) for p in parts) and sum(len(p) for p in parts) == len(whole)
    merged, alone = merge(parts), merge([whole])
    assert merged.key == alone.key
    assert np.array_equal(merged.label, alone.label) and np.array_equal(merged.pred, alone.pred)
    with pytest.raises(ValueError, match="twice"):
        merge([parts[0], parts[0]])


def test_the_outcomes_view_binds_before_any_run_wrote_outcomes(tmp_path):
    """An older root (or a fresh one): the view exists, empty, with its columns."""
    sql = "SELECT count(*) AS n, sum(correct) AS c, max(key) AS k FROM outcomes"
    assert store.query(ResultsRoot(tmp_path), sql).to_pylist() == [{"n": 0, "c": None, "k": None}]


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    import pickle

    from dplbench.run.outcomes import SampleOutcomes, gather

    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    keys = tuple(f"{i:03d}" for i in range(rank, 10, world))  # this rank's share, interleaved
    label = np.array([int(k) % 3 for k in keys], np.int16)
    mine = SampleOutcomes(keys, label, (label + rank) % 3)  # rank 0 right, rank 1 wrong
    merged = gather(mine)
    with open(f"{out}.{rank}", "wb") as f:
        pickle.dump(merged, f)
    torch.distributed.destroy_process_group()


def test_gather_brings_every_ranks_share_to_every_rank_in_key_order(tmp_path):
    """Two gloo ranks, each holding half a split's outcomes: both end with the whole split,
    sorted by key, each sample's prediction the one its own rank made."""
    import pickle

    init = f"file://{tmp_path / 'store'}"
    torch.multiprocessing.spawn(_gather_worker, args=(2, init, str(tmp_path / "out")), nprocs=2)
    got = [pickle.loads((tmp_path / f"out.{r}").read_bytes()) for r in (0, 1)]
    assert got[0].key == got[1].key == tuple(f"{i:03d}" for i in range(10))
    for merged in got:
        assert np.array_equal(merged.label, [i % 3 for i in range(10)])
        assert merged.correct.tolist() == [i % 2 == 0 for i in range(10)]  # even keys: rank 0


def test_compaction_folds_outcomes_and_the_view_reads_the_same(tmp_path):
    """The outcomes table is compacted like the others (results/compact.py over store.TABLES)."""
    from dplbench.results import compact

    root = ResultsRoot(tmp_path)
    for j in range(4):
        o = np.arange(50) % (j + 2) == 0
        split = {"dataset": "dtd", "subsample": "base", "split": "test", "seed": j,
                 "key": [f"{i:03d}" for i in range(50)], "label": np.zeros(50), "pred": 1 - o}  # fmt: skip
        store.write_outcomes(root, "s", ("coop", "dpl")[j % 2], f"job{j}", "r1", [split])
    sql = "SELECT * FROM outcomes ORDER BY job_id, key"
    before = store.query(root, sql).to_pylist()
    done = compact.compact(root, tables=("outcomes",))
    assert done.files_in == 4 and store.query(root, sql).to_pylist() == before
    assert len(before) == 200 and {r["method"] for r in before} == {"coop", "dpl"}
