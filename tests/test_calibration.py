"""Bench calibration: saved and found again, jobs per GPU from measured memory, suite estimates
by hand, and the report's cost-versus-accuracy table."""

import pytest
import torch

from dplbench.bench import calibration as saved
from dplbench.plan import cost as calibration
from dplbench.plan.cost import Calibration
from dplbench.plan.suites import load_suite
from dplbench.results.report import cost_table, report_markdown
from dplbench.results.root import ResultsRoot


def _row(method, **kw):
    return {"model": "ViT-B-16", "method": method, "train_ms": 100.0, "eval_img_s": 1000.0,
            "peak_mib": 9216.0, "params": 2048, "batch": 4, "eval_batch": 4, **kw}  # fmt: skip


def test_saved_calibration_is_found_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache"))
    paths = saved.save([_row("coop")], torch.device("cpu"), ResultsRoot(tmp_path / "results"))
    assert len(paths) == 2 and all(p.endswith(".json") for p in paths)
    mine = calibration.load()
    assert mine is not None and mine.device == saved.device_key(torch.device("cpu"))
    assert mine.row("ViT-B-16", "coop")["train_ms"] == 100.0
    assert mine.memory_mib is None  # a CPU calibration
    bench = str(tmp_path / "results" / "bench")
    assert calibration.load_for(8, bench) is None  # no GPU one anywhere
    assert [c.device for c in calibration.load_all(bench)] == [mine.device]


def test_jobs_per_gpu_from_peak_memory_capped_by_cpus():
    jobs = list(load_suite("base2novel", {"methods": ["coop"], "seeds": [1]}).jobs)
    calib = Calibration("nvidia-x", 81920.0, [_row("coop")])
    n, why = calibration.auto_jobs_per_gpu(calib, jobs, cpus_per_gpu=16, cpus_per_job=1)
    assert n == int(0.85 * 81920 // 9216) == 7 and "9216 MiB" in why
    assert calibration.auto_jobs_per_gpu(calib, jobs, cpus_per_gpu=4, cpus_per_job=1)[0] == 4
    assert calibration.auto_jobs_per_gpu(None, jobs, 16, 1)[0] == 1


def test_estimate_by_hand():
    (job,) = load_suite("fewshot", {"methods": ["coop"], "seeds": [1], "datasets": ["dtd"]}).jobs[
        :1
    ]
    assert (job.train.shots, job.epochs) == (1, 50)
    calib = Calibration("nvidia-x", 81920.0, [_row("coop")])
    est = calibration.estimate([job], calib, slots=2, startup_s=5.0)
    # 47 classes x 1 shot x 50 epochs x 100 ms / 4 per sample + 1692 test images / 1000 per s + 5
    seconds = 47 * 50 * 0.1 / 4 + 1692 / 1000 + 5
    assert est.gpu_hours == pytest.approx(seconds / 3600)
    assert est.wall_hours == pytest.approx(seconds / 2 / 3600)
    assert (est.covered, est.jobs) == (1, 1)
    uncovered = calibration.estimate([job], Calibration("x", None, [_row("ivlp")]), slots=1)
    assert uncovered.covered == 0 and uncovered.gpu_hours == 0


def test_cost_table_puts_bench_rows_beside_hm():
    b2n = [
        {"method": "coop", "dataset": "average", "hm": 71.7},
        {"method": "dpl", "dataset": "average", "hm": 80.0},
        {"method": "dpl", "dataset": "dtd", "hm": 60.0},
    ]
    table = cost_table(b2n, [_row("coop"), _row("dpl", train_ms=150.0), _row("ivlp")])
    assert [(r["method"], r["train_ms"], r["hm"]) for r in table] == [
        ("coop", 100.0, 71.7),
        ("dpl", 150.0, 80.0),
    ]
    rows = [
        {"protocol": "base2novel", "method": "coop", "dataset": d, "subsample": s, "split": "test",
         "seed": 1, "accuracy": 70.0, "config": '{"config": {"backbone": {"model": "ViT-B-16"}}}'}
        for d in ("dtd",) for s in ("base", "novel")
    ]  # fmt: skip
    md = report_markdown(rows, compare=False, bench=[_row("coop")])
    assert "## Cost and accuracy" in md and "| coop | 2,048 | 100.00 |" in md
