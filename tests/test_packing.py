"""Jobs packed onto GPUs: with 2 (simulated) GPUs and 4 jobs per GPU, 8 jobs run at once and no
more, each holding a quarter of a GPU."""

import json
import sys

import pytest

from dplbench.plan.suites import load_suite
from dplbench.plan.units import Unit
from dplbench.run import launcher
from dplbench.run.events import JobEnded
from dplbench.run.settings import ExecOptions, RunSettings

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
ray = pytest.importorskip("ray")


def _probe(config):
    """A stand-in trial: records when it ran and what Ray gave it, instead of training."""
    import json
    import time
    from pathlib import Path

    import ray
    import ray.tune

    spec = config["spec"]
    start = time.time()
    # Stay alive until eight trials have started (or 60 s): on a loaded machine Ray may start
    # them seconds apart, and a fixed sleep would then measure the machine, not the packing.
    started = Path(spec.settings.root.path) / "started"
    started.mkdir(parents=True, exist_ok=True)
    (started / spec.key).touch()
    while len(list(started.iterdir())) < 8 and time.time() - start < 60:
        time.sleep(0.1)
    time.sleep(0.5)
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU")
    record = {"key": spec.key, "start": start, "end": time.time(), "gpu": gpus}
    log = Path(spec.settings.root.path) / "probe" / f"{spec.key}.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(record))
    from dplbench.run import tune_io
    from dplbench.run.events import JobEnded

    tune_io.report(JobEnded(spec.key, "done"))
    tune_io.report_unit_end()


def test_eight_jobs_at_once_on_two_gpus_at_four_per_gpu(tmp_path):
    ray.shutdown()
    ray.init(address="local", num_cpus=16, num_gpus=2, log_to_driver=False)
    try:
        jobs = load_suite("smoke", {"methods": ["coop"], "seeds": list(range(1, 13))}).jobs
        settings = RunSettings.local(str(tmp_path / "d"), str(tmp_path / "r"))
        opts = ExecOptions.local(gpus=2, jobs_per_gpu=4)
        assert launcher.concurrency(1, opts) == 8
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
        ended = []
        units = [Unit(j.id, (j,)) for j in jobs]
        launcher.launch(units, settings, opts, ended.append, trainable=_probe)
        ends = [e for e in ended if isinstance(e, JobEnded)]
        assert [e.status for e in ends] == ["done"] * 12
        runs = [json.loads(p.read_text()) for p in (tmp_path / "r" / "probe").glob("*.json")]
        assert len(runs) == 12 and {r["gpu"] for r in runs} == {0.25}
        # the most trials alive at any moment
        events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
        alive = peak = 0
        for _, step in events:
            alive += step
            peak = max(peak, alive)
        assert peak == 8
    finally:
        ray.shutdown()
