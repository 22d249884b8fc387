"""Everything Ray: one Ray Tune trial per job, a Ray Train `TorchTrainer` inside each trial.

Why Tune: it is Ray's supported way to run many Train runs at once (STACK-NOTES), with a
concurrency bound, per-trial failure isolation and callbacks for the live table. Tune does not
count the Train workers' resources, so concurrency is bounded by `max_concurrent_trials` computed
from --gpus / --cpus, and each trial itself holds only a sliver of a CPU.

Train runs are named `<job_id>-<run_id>` under `R/ray/jobs/`; `--resume` reuses a job's newest run
name, and Ray then restarts it from its last per-epoch checkpoint. `FailureConfig(max_failures)`
does the same after a worker dies mid-job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray.tune as tune
import torch

from dplbench.config import ConfigError
from dplbench.suites import Job
from dplbench.train import LocalContext, RunSettings, run_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecOptions:
    gpus: int = 0  # GPUs to use in all; 0: CPU workers
    cpus: int | None = None  # CPUs to use in all (default: all of this machine / the cluster's)
    cpus_per_worker: float = 1.0
    address: str | None = None  # join a running cluster ("auto", "ray://…", "host:port")
    max_failures: int = 2  # Train restarts of one job from its last checkpoint
    resume: bool = False
    use_ray: bool = True  # False: jobs run one after the other in this process


# ---- the two functions that run on the cluster ------------------------------------------------


class RayTrainContext:
    """WorkerContext on a Ray Train worker."""

    def __init__(self) -> None:
        import ray
        import ray.train
        import ray.train.torch

        tc = ray.train.get_context()
        self.rank, self.world_size = tc.get_world_rank(), tc.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node = ray.get_runtime_context().get_node_id()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def latest_checkpoint(self) -> str | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.to_directory() if ckpt is not None else None


def _train_worker(config: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    job = Job.from_dict(config["job"])
    run_job(job, RunSettings(**config["settings"]), RayTrainContext())


def _job_trial(config: dict[str, Any]) -> None:
    """A Tune trial: one job as a TorchTrainer run."""
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    config = config["cfg"]
    job, ex = Job.from_dict(config["job"]), config["exec"]
    use_gpu = ex["gpus"] > 0
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"job": config["job"], "settings": config["settings"]},
        scaling_config=ScalingConfig(
            num_workers=job.workers,
            use_gpu=use_gpu,
            resources_per_worker={"GPU": 1, "CPU": ex["cpus_per_worker"]}
            if use_gpu
            else {"CPU": ex["cpus_per_worker"]},
        ),
        run_config=RunConfig(
            name=config["run_name"],
            storage_path=ex["storage"],
            # Without a controller limit an infeasible worker group is retried forever.
            failure_config=FailureConfig(
                max_failures=ex["max_failures"], controller_failure_limit=2
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=[TuneReportCallback()],
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    ray.tune.report({"job_done": 1})


# ---- the driver ----------------------------------------------------------------------------


@dataclass
class JobOutcome:
    job: Job
    status: str  # done | failed
    error: str | None = None


JobEvent = Callable[[str, str, dict[str, Any]], None]  # (job_id, state, info)


# Tune pickles its callbacks; the live table (locks, a terminal) stays here, found by a token.
_EVENT_SINKS: dict[str, JobEvent] = {}


class _TuneEvents(tune.Callback):
    """Trial state changes and epoch results -> the driver's JobEvent sink (module level, so
    that Tune pickles it by reference)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _emit(self, trial, state: str, info: dict) -> None:
        sink = _EVENT_SINKS.get(self.token)
        if sink is not None:
            sink(trial.config["cfg"]["job"]["id"], state, info)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._emit(trial, "running", {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result:
            self._emit(
                trial, "running", {"epoch": int(result["epoch"]) + 1, "loss": result.get("loss")}
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._emit(trial, "done", {})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._emit(trial, "failed", {})


def run_name(storage: Path, job: Job, run_id: str, resume: bool) -> str:
    if resume:
        previous = sorted((storage).glob(f"{job.id}-*"), key=lambda p: p.stat().st_mtime)
        if previous:
            return previous[-1].name
    return f"{job.id}-{run_id}"


def init_ray(opts: ExecOptions) -> None:
    import ray

    # Our live table replaces Tune's console reporter (verbose=0 silences the old one only);
    # read by the driver, so it holds for a Ray someone else started too.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    # Train's controller polls workers every 2 s by default: ~18 s of overhead per short job.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    kw = {"log_to_driver": False, "logging_level": logging.WARNING}
    if opts.address:
        ray.init(address=opts.address, **kw)
    else:
        ray.init(num_cpus=opts.cpus, num_gpus=opts.gpus, **kw)


# A trial only drives its TorchTrainer and sleeps: it reserves a token of memory and no CPU
# (Tune refuses an empty request, and a CPU sliver per trial would keep whole workers off a node).
TRIAL_RESOURCES = {"memory": 2**20}


def _concurrency(jobs: list[Job], opts: ExecOptions) -> int:
    """Jobs at once: Tune does not count the Train workers, so bound trials by what the workers
    of the largest job need. A job that can never fit is an error now, not a hang later."""
    import ray

    workers = max(j.workers for j in jobs)
    have = ray.cluster_resources()
    if opts.gpus > 0:
        gpus = min(opts.gpus, int(have.get("GPU", 0)))
        if workers > gpus:
            raise ConfigError(f"a job needs {workers} GPU workers; the cluster offers {gpus}")
        return max(1, gpus // workers)
    need = workers * opts.cpus_per_worker
    if need > have.get("CPU", 0):
        raise ConfigError(
            f"a job needs {workers} workers x {opts.cpus_per_worker:g} CPU; the cluster has "
            f"{have.get('CPU', 0):g} CPUs (use fewer --workers)"
        )
    cpus = opts.cpus or have.get("CPU", 0)
    return max(1, int(cpus // need))


def run_jobs(
    jobs: list[Job], settings: RunSettings, opts: ExecOptions, on_event: JobEvent | None = None
) -> list[JobOutcome]:
    """Run jobs (one phase: no job here depends on another here); returns their outcomes."""
    if not jobs:
        return []
    emit = on_event or (lambda *a: None)
    if not opts.use_ray:
        return [_run_local(j, settings, emit, opts.resume) for j in jobs]
    return _run_tune(jobs, settings, opts, emit)


def _run_local(job: Job, settings: RunSettings, emit: JobEvent, resume: bool) -> JobOutcome:
    emit(job.id, "running", {})
    try:
        run_job(job, settings, LocalContext(settings.results, job.id, resume=resume))
    except Exception as e:  # a failed job is recorded; the others go on
        log.exception("job %s failed", job.id)
        emit(job.id, "failed", {"error": str(e)})
        return JobOutcome(job, "failed", f"{type(e).__name__}: {e}")
    emit(job.id, "done", {})
    return JobOutcome(job, "done")


def _run_tune(jobs: list[Job], settings: RunSettings, opts: ExecOptions, emit: JobEvent):
    init_ray(opts)
    storage = Path(settings.results).resolve() / "ray"
    job_storage = storage / "jobs"
    settings_d = asdict(settings)
    ex = {
        "gpus": opts.gpus,
        "cpus_per_worker": opts.cpus_per_worker,
        "max_failures": opts.max_failures,
        "storage": str(job_storage),
    }
    configs = [
        {
            "job": j.to_dict(),
            "settings": settings_d,
            "exec": ex,
            "run_name": run_name(job_storage, j, settings.run_id, opts.resume),
        }
        for j in jobs
    ]
    token = settings.run_id
    _EVENT_SINKS[token] = emit
    tuner = tune.Tuner(
        tune.with_resources(_job_trial, TRIAL_RESOURCES),
        param_space={"cfg": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=_concurrency(jobs, opts)),
        run_config=tune.RunConfig(
            name=f"{settings.suite}-{settings.run_id}-{int(time.time())}",
            storage_path=str(storage),
            callbacks=[_TuneEvents(token)],
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=0,
        ),
    )
    try:
        grid = tuner.fit()
    finally:
        _EVENT_SINKS.pop(token, None)
    outcomes = {}
    for r in grid:
        job = Job.from_dict(r.config["cfg"]["job"])
        outcomes[job.id] = JobOutcome(
            job,
            "failed" if r.error else "done",
            f"{type(r.error).__name__}: {r.error}" if r.error else None,
        )
    return [outcomes.get(j.id, JobOutcome(j, "failed", "never ran")) for j in jobs]
