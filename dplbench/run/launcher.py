"""Everything Ray, in one place: jobs launched as Ray Tune trials, one Ray Train run per job.

`dplbench run`, `tune` and `ablate` all go through `launch` (one Tuner: trial resources,
concurrency, failure handling, events to the driver, placement-group cleanup), and every job
inside a trial through `fit_job` (one `TorchTrainer`: DDP workers, per-epoch checkpoints, worker
restarts). Two kinds of trial share them (run/trials.py): `job_trial` (one job, `dplbench run`)
and `sweep_trial` (one sweep setting: its jobs at once, the validation objective reported every
epoch for ASHA).

Why Tune: it is Ray's supported way to run many Train runs at once (docs/ray-notes.md), with per-trial
failure isolation and callbacks for the live table. Tune does not count the Train workers'
resources, so `concurrency` bounds the trials by what their workers need, and each trial itself
holds only a token of memory.

Train runs are named `<job_id>-<run_id>`; `--resume` reuses a job's newest run name, and Ray then
restarts it from its last per-epoch checkpoint. `FailureConfig(max_failures)` does the same after
a worker dies mid-job.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune as tune
import torch

from dplbench.errors import ConfigError
from dplbench.plan.jobs import Job
from dplbench.results import location
from dplbench.run import placement_groups
from dplbench.run.context import CheckpointStore, LocalContext
from dplbench.run.failures import one_line
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.worker import final_val_accuracy, run_job

log = logging.getLogger(__name__)

# A trial only drives its TorchTrainers and sleeps: it reserves a token of memory and no CPU
# (Tune refuses an empty request, and a CPU sliver per trial would keep whole workers off a node).
TRIAL_RESOURCES = {"memory": 2**20}
# Train's controller retries a worker group that cannot start forever unless limited (docs/ray-notes.md).
CONTROLLER_FAILURE_LIMIT = 1
# The newest checkpoint is all a restart or --resume needs.
CHECKPOINTS_KEPT = 1


# ---- on the Train workers ------------------------------------------------------------------


class RayTrainContext:
    """WorkerContext on a Ray Train worker. Rank 0 leaves its placement group's id under `pg_dir`
    (see run/placement_groups.py) and, in sweeps, streams each epoch's validation accuracy to
    the trial through `queue`."""

    def __init__(self, job_id: str, queue: Any = None, pg_dir: str | None = None) -> None:
        import ray
        import ray.train
        import ray.train.torch

        tc = ray.train.get_context()
        self.rank, self.world_size = tc.get_world_rank(), tc.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node = ray.get_runtime_context().get_node_id()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.job_id, self.queue = job_id, queue
        self.reports = 0
        self.last_val: float | None = None
        if self.rank == 0 and pg_dir:
            placement_groups.announce(pg_dir, job_id)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)  # checkpoint first: a restart starts after it
        self.reports += 1
        if metrics.get("val_accuracy") is not None:
            self.last_val = float(metrics["val_accuracy"])
            if self.rank == 0 and self.queue is not None:
                self.queue.put((self.job_id, int(metrics["epoch"]), self.last_val))

    def latest_checkpoint(self) -> str | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.to_directory() if ckpt is not None else None


def run_in_trial(job: Job, settings: RunSettings, run_name: str) -> dict[str, Any]:
    """One single-worker job in this Tune trial's process (a plain trial): checkpoints in the
    results root, each epoch's metrics reported to Tune (the live table, ASHA)."""
    import ray

    ctx = LocalContext(
        settings.results,
        job.id,
        run_name,
        node=ray.get_runtime_context().get_node_id(),
        also_report=tune.report,
    )
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    return {"rows": run_job(job, settings, ctx)}


def _train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    logging.basicConfig(level=logging.WARNING)
    job, settings = config["job"], config["settings"]
    ctx = RayTrainContext(job.id, config.get("queue"), config.get("pg_dir"))
    rows = run_job(job, settings, ctx)
    val = None
    if settings.val_each_epoch:
        # Every rank reported the same epochs, so every rank takes this branch or none.
        val = ctx.last_val if ctx.reports else final_val_accuracy(job, settings, ctx)
    return {"rows": rows, "val_accuracy": val} if ctx.rank == 0 else None


def fit_job(
    job: Job,
    settings: RunSettings,
    ex: dict[str, Any],
    run_name: str,
    queue: Any = None,
    pg_dir: str | None = None,
    report_to_tune: bool = False,
) -> dict[str, Any] | None:
    """One job as one Ray Train run (the only `TorchTrainer` of the project); returns rank 0's
    rows (and validation accuracy in sweeps)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = ex["gpus"] > 0
    per_worker = {"CPU": ex["cpus_per_worker"], **({"GPU": ex["gpu_share"]} if use_gpu else {})}
    callbacks = []
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"job": job, "settings": settings, "queue": queue, "pg_dir": pg_dir},
        scaling_config=ScalingConfig(
            num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=ex["storage"],
            failure_config=FailureConfig(
                max_failures=ex["max_failures"], controller_failure_limit=CONTROLLER_FAILURE_LIMIT
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.return_value


# ---- the driver ----------------------------------------------------------------------------


@dataclass
class TrialEnd:
    key: str
    status: str  # done | stopped | failed
    error: str | None = None


# (trial key, state, info): state running | result | done | stopped | failed; info carries the
# Tune result ("result") or {"last": last result, "error": one line} when a trial ends.
TrialEvent = Callable[[str, str, dict[str, Any]], None]
# Tune pickles its callbacks; the driver's sinks (live tables, record writers) stay here, found by
# a token.
_SINKS: dict[str, TrialEvent] = {}


class _TrialEvents(tune.Callback):
    def __init__(self, token: str) -> None:
        self.token = token

    def _emit(self, trial, state: str, info: dict) -> None:
        if state in ("done", "stopped", "failed"):
            pg_dir = trial.config["cfg"]["pg_dir"]
            if state != "done":  # its Train placement groups may outlive it
                placement_groups.release(pg_dir)
            for f in location.listdir(pg_dir):
                location.remove(f)
        sink = _SINKS.get(self.token)
        if sink is not None:
            sink(trial.config["cfg"]["key"], state, info)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._emit(trial, "running", {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._emit(trial, "result", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # TERMINATED without the trial's final report: the scheduler stopped it.
        last = trial.last_result or {}
        if last.get("failed"):  # the trial reported its job's failure and ended
            self._emit(trial, "failed", {"last": last, "error": last["failed"]})
            return
        self._emit(trial, "done" if last.get("trial_done") else "stopped", {"last": last})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._emit(trial, "failed", {"last": trial.last_result or {}, "error": _error_line(trial)})


def _error_line(trial: Any) -> str:
    """The one line of a failed trial, from Tune's error file (our JobFailed line when there)."""
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
    except (OSError, TypeError):
        return "error"
    ours = [ln.split("JobFailed: ", 1)[1] for ln in lines if "JobFailed: " in ln]
    return (ours[-1] if ours else next((ln for ln in reversed(lines) if ln.strip()), "error"))[
        :1000
    ]


def init_ray(opts: ExecOptions) -> None:
    import ray

    # Our live table replaces Tune's console reporter (verbose=0 silences the old one only);
    # read by the driver, so it holds for a Ray someone else started too.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    # Train's controller polls workers every 2 s by default: ~18 s of overhead per short job.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Every running job is three kinds of Ray process at least (its Tune trial, its Train
    # controller, its workers), so on a small machine more processes start at once than the
    # raylet expects (its CPU count) and it prints a warning about it on the console. That is our
    # design, not a leak: let a Ray we start expect four processes per CPU.
    cpus = opts.cpus or os.cpu_count() or 1
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(4 * cpus))
    kw = {"log_to_driver": False, "logging_level": logging.WARNING}
    if opts.address:
        ray.init(address=opts.address, **kw)
    else:
        ray.init(num_cpus=opts.cpus, num_gpus=opts.gpus, **kw)


def ray_log_path(settings: RunSettings) -> Path:
    """R/logs/ray-<run>.log; a local temporary folder when results live on an object store (a
    log file is appended to, which object stores cannot do)."""
    root = settings.results
    logs = Path(tempfile.gettempdir(), "dplbench-logs") if location.is_uri(root) else Path(root)
    return logs / "logs" / f"ray-{settings.run_id}.log"


def ray_log_to_file(path: Path) -> None:
    """Ray's own driver-side log lines (Tune's trial errors with their tracebacks, status lines)
    go to `path`, not the console: the live table and the one-line failures are the console's."""
    ray_log = logging.getLogger("ray")
    for h in list(ray_log.handlers):
        ours = getattr(h, "dplbench", False)
        if ours or (
            isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ):
            ray_log.removeHandler(h)
            if ours:
                h.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.dplbench = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_log.addHandler(handler)
    ray_log.propagate = False


def concurrency(workers_per_trial: int, opts: ExecOptions) -> int:
    """Trials at once: Tune does not count the Train workers, so bound trials by what the workers
    of the largest trial need. A trial that can never fit is an error now, not a hang later."""
    import ray

    have = ray.cluster_resources()
    if opts.gpus > 0:
        gpus = min(opts.gpus, int(have.get("GPU", 0)))
        slots = gpus * opts.jobs_per_gpu  # worker places, with jobs packed per GPU
        if workers_per_trial > slots:
            raise ConfigError(
                f"a trial needs {workers_per_trial} GPU workers; the cluster offers {gpus} GPUs "
                f"x {opts.jobs_per_gpu} jobs per GPU"
            )
        return max(1, slots // workers_per_trial)
    need = workers_per_trial * opts.cpus_per_worker
    if need > have.get("CPU", 0):
        raise ConfigError(
            f"a trial needs {workers_per_trial} workers x {opts.cpus_per_worker:g} CPU; the "
            f"cluster has {have.get('CPU', 0):g} CPUs (use fewer --workers)"
        )
    cpus = opts.cpus or have.get("CPU", 0)
    return max(1, int(cpus // need))


def run_name(storage: str, job: Job, run_id: str, resume: bool) -> str:
    """`<job>-<run>`; with --resume the job's earlier run with the newest checkpoint (Ray names
    checkpoints by time), which Ray restarts from that checkpoint."""
    if resume:
        previous = [d for d in location.subdirs(storage) if d.startswith(f"{job.id}-")]
        newest = {d: max(location.subdirs(location.join(storage, d)), default="") for d in previous}
        if previous:
            return max(previous, key=lambda d: newest[d])
    return f"{job.id}-{run_id}"


def launch(
    trainable: Callable[[dict[str, Any]], None],
    trials: dict[str, list[Job]],
    settings: RunSettings,
    opts: ExecOptions,
    storage: str,
    on_event: TrialEvent | None = None,
    scheduler: Any = None,
    plain: bool = False,
) -> list[TrialEnd]:
    """Run `trials` (key -> its jobs) as Tune trials of `trainable` on Ray; returns how each
    ended. Jobs' Train runs live under `storage/jobs`, the Tune experiment under `storage`.

    plain: every trial is one single-worker job that the trial runs itself (no TorchTrainer, the
    trial holds the job's CPU and GPU share); Tune restarts a trial that died, from the job's
    checkpoints in the results root, and reuses trial actors, so imports and cached frozen models
    survive from one job to the next."""
    init_ray(opts)
    jobs_storage = location.join(storage, "jobs")
    ex = {
        "gpus": opts.gpus,
        "gpu_share": 1.0 / opts.jobs_per_gpu,
        "cpus_per_worker": opts.cpus_per_worker,
        "max_failures": opts.max_failures,
        "storage": str(jobs_storage),
    }

    def names(jobs: list[Job]) -> dict[str, str]:
        if plain:
            return {
                j.id: CheckpointStore.run_name(settings.results, j.id, settings.run_id, opts.resume)
                for j in jobs
            }
        return {j.id: run_name(jobs_storage, j, settings.run_id, opts.resume) for j in jobs}

    configs = [
        {
            "key": key,
            "jobs": jobs,
            "run_names": names(jobs),
            "settings": settings,
            "exec": ex,
            "plain": plain,
            "pg_dir": location.join(storage, "placement_groups", settings.run_id, key),
        }
        for key, jobs in trials.items()
    ]
    workers = max(sum(j.workers for j in jobs) for jobs in trials.values())
    resources = TRIAL_RESOURCES
    if plain:
        resources = {"CPU": opts.cpus_per_worker}
        if opts.gpus > 0:
            resources["GPU"] = ex["gpu_share"]
    token = f"{settings.run_id}-{time.time_ns()}"
    if on_event is not None:
        _SINKS[token] = on_event
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"cfg": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            max_concurrent_trials=concurrency(workers, opts),
            reuse_actors=plain,
        ),
        run_config=tune.RunConfig(
            name=f"{settings.suite}-{settings.run_id}-{int(time.time())}",
            storage_path=str(storage),
            callbacks=[_TrialEvents(token)],
            # A failing trial is recorded and the others go on. Plain trials are restarted when
            # their process dies (TorchTrainers restart their own workers).
            failure_config=tune.FailureConfig(
                max_failures=opts.max_failures if plain else 0, fail_fast=False
            ),
            verbose=0,
        ),
    )
    ray_log_to_file(ray_log_path(settings))
    before = placement_groups.snapshot()
    try:
        grid = tuner.fit()
    finally:
        _SINKS.pop(token, None)
        placement_groups.remove_leaked(before)
    ends = {}
    for r in grid:
        key = r.config["cfg"]["key"]
        last = r.metrics or {}
        if r.error is not None:
            ends[key] = TrialEnd(key, "failed", one_line(r.error))
        elif last.get("failed"):  # the trial reported its job's failure and ended
            ends[key] = TrialEnd(key, "failed", last["failed"])
        else:
            ends[key] = TrialEnd(key, "done" if last.get("trial_done") else "stopped")
    return [ends.get(k, TrialEnd(k, "failed", "never ran")) for k in trials]
