"""Everything Ray, in one place: jobs launched as Ray Tune trials, one Ray Train run per job.

`dplbench run`, `tune` and `ablate` all go through `launch` (one Tuner: trial resources,
concurrency, failure handling, events to the driver, placement-group cleanup). Each trial gets one
typed, frozen `TrialSpec` (its jobs, their checkpoint runs, the run settings, the resources). Two
kinds of trial run on it (run/trials.py): `job_trial` (one job, `dplbench run` / `ablate`) and
`sweep_trial` (one sweep setting: its jobs at once, the validation objective reported every
epoch for ASHA).

A job runs in its trial's own process (a plain trial: single-worker jobs) or as one Ray Train
`TorchTrainer` (`fit_job`: DDP workers, worker restarts). Both keep their checkpoints in the
results root (`CheckpointStore`, one per job run) and restart from there: a plain trial that died
is restarted by Tune, a DDP worker group by Train (`FailureConfig(max_failures)`), and `--resume`
continues each job's run whose newest checkpoint is the latest (`ResultsRoot.resume_run`).

Why Tune: it is Ray's supported way to run many Train runs at once (docs/operating.md §5), with
per-trial failure isolation and callbacks for the live table. Tune does not count the Train
workers' resources, so `concurrency` bounds the trials by what their workers need, and each trial
itself holds only a token of memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune as tune
import torch

from dplbench import storage
from dplbench.errors import ConfigError
from dplbench.plan.jobs import Job
from dplbench.results.root import ResultsRoot
from dplbench.run import placement_groups
from dplbench.run.context import CheckpointStore, LocalContext
from dplbench.run.failures import one_line
from dplbench.run.settings import ExecOptions, RunSettings
from dplbench.run.worker import final_val_accuracy, run_job

log = logging.getLogger(__name__)

# A trial that only drives TorchTrainers reserves a token of memory and no CPU (Tune refuses an
# empty request, and a CPU sliver per trial would keep whole workers off a node).
TRIAL_RESOURCES = {"memory": 2**20}
# Train's controller retries a worker group that cannot start forever unless limited
# (docs/operating.md §5).
CONTROLLER_FAILURE_LIMIT = 1


@dataclass(frozen=True)
class WorkerResources:
    gpus: int  # GPUs of the run in all (0: CPU workers)
    gpu_share: float  # of one GPU per worker (1 / jobs per GPU)
    cpus_per_worker: float
    max_failures: int  # restarts of a job from its last checkpoint
    train_storage: str  # Ray Train's own run state (R/ray/.../jobs)


@dataclass(frozen=True)
class TrialSpec:
    """One Tune trial's work, typed: its jobs, the checkpoint run each job writes to, how they
    run. Travels to the trial's process as its config (`config["spec"]`)."""

    key: str
    jobs: tuple[Job, ...]
    run_names: tuple[str, ...]  # per job, in order: its CheckpointStore run
    settings: RunSettings
    resources: WorkerResources
    plain: bool  # single-worker jobs in the trial's own process (no TorchTrainer)
    pg_dir: str  # where its Train runs announce their placement groups

    def run_name(self, job: Job) -> str:
        return self.run_names[self.jobs.index(job)]


# ---- on the Train workers ------------------------------------------------------------------


class RayTrainContext:
    """WorkerContext on a Ray Train worker. Checkpoints go to the results root like every other
    run's (rank 0 writes; every rank of a restarted group reads the newest). Rank 0 leaves its
    placement group's id under `pg_dir` (see run/placement_groups.py) and, in sweeps, streams
    each epoch's validation accuracy to the trial through `queue`."""

    def __init__(self, job: Job, spec: TrialSpec, queue: Any = None) -> None:
        import ray
        import ray.train
        import ray.train.torch

        tc = ray.train.get_context()
        self.rank, self.world_size = tc.get_world_rank(), tc.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node = ray.get_runtime_context().get_node_id()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.job_id, self.queue = job.id, queue
        self.store = CheckpointStore(spec.settings.results, job.id, spec.run_name(job))
        self.reports = 0
        self.last_val: float | None = None
        if self.rank == 0:
            placement_groups.announce(spec.pg_dir, job.id)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        if checkpoint_dir and self.rank == 0:  # checkpoint first: a restart starts after it
            self.store.save(int(metrics["epoch"]), checkpoint_dir)
        ray.train.report(metrics)
        self.reports += 1
        if metrics.get("val_accuracy") is not None:
            self.last_val = float(metrics["val_accuracy"])
            if self.rank == 0 and self.queue is not None:
                self.queue.put((self.job_id, int(metrics["epoch"]), self.last_val))

    def latest_checkpoint(self) -> str | None:
        return self.store.latest()


def run_in_trial(job: Job, spec: TrialSpec) -> dict[str, Any]:
    """One single-worker job in this Tune trial's process (a plain trial): checkpoints in the
    results root, each epoch's metrics reported to Tune (the live table, ASHA)."""
    import ray

    ctx = LocalContext(
        spec.settings.results,
        job.id,
        spec.run_name(job),
        node=ray.get_runtime_context().get_node_id(),
        also_report=tune.report,
    )
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    return {"rows": run_job(job, spec.settings, ctx)}


def _train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    logging.basicConfig(level=logging.WARNING)
    job, spec = config["job"], config["spec"]
    ctx = RayTrainContext(job, spec, config.get("queue"))
    rows = run_job(job, spec.settings, ctx)
    val = None
    if spec.settings.val_each_epoch:
        # Every rank reported the same epochs, so every rank takes this branch or none.
        val = ctx.last_val if ctx.reports else final_val_accuracy(job, spec.settings, ctx)
    return {"rows": rows, "val_accuracy": val} if ctx.rank == 0 else None


def fit_job(
    job: Job, spec: TrialSpec, queue: Any = None, report_to_tune: bool = False
) -> dict[str, Any] | None:
    """One job as one Ray Train run (the only `TorchTrainer` of the project); returns rank 0's
    rows (and validation accuracy in sweeps)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = spec.resources
    use_gpu = res.gpus > 0
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpu_share} if use_gpu else {})}
    callbacks = []
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"job": job, "spec": spec, "queue": queue},
        scaling_config=ScalingConfig(
            num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            # A fresh name per run: Train would otherwise resume its own state; our checkpoints
            # (CheckpointStore) decide where a job continues.
            name=f"{spec.run_name(job)}-{spec.settings.run_id}",
            storage_path=res.train_storage,
            failure_config=FailureConfig(
                max_failures=res.max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT
            ),
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


class _TrialEvents(tune.Callback):
    """Tune's trial callbacks -> the driver's event sink. Tune may pickle its callbacks with the
    experiment state; the sink (live tables, record writers) stays with the driver's own copy."""

    def __init__(self, sink: TrialEvent | None) -> None:
        self.sink = sink

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "sink": None}

    def _emit(self, trial, state: str, info: dict) -> None:
        spec: TrialSpec = trial.config["spec"]
        if state in ("done", "stopped", "failed"):
            if state != "done":  # its Train placement groups may outlive it
                placement_groups.release(spec.pg_dir)
            for f in storage.listdir(spec.pg_dir):
                storage.remove(f)
        if self.sink is not None:
            self.sink(spec.key, state, info)

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


def trial_specs(
    trials: dict[str, list[Job]],
    settings: RunSettings,
    opts: ExecOptions,
    plain: bool,
    sweep: str | None = None,
) -> list[TrialSpec]:
    """The typed trials of a launch: each job's checkpoint run (fresh, or the one --resume
    continues), the worker resources, where placement groups are announced."""
    root = ResultsRoot(settings.results)
    resources = WorkerResources(
        gpus=opts.gpus,
        gpu_share=1.0 / opts.jobs_per_gpu,
        cpus_per_worker=opts.cpus_per_worker,
        max_failures=opts.max_failures,
        train_storage=storage.join(root.ray_storage(sweep), "jobs"),
    )
    return [
        TrialSpec(
            key=key,
            jobs=tuple(jobs),
            run_names=tuple(root.resume_run(j.id, settings.run_id, opts.resume) for j in jobs),
            settings=settings,
            resources=resources,
            plain=plain,
            pg_dir=root.placement_groups(settings.run_id, key, sweep),
        )
        for key, jobs in trials.items()
    ]


def launch(
    trainable: Callable[[dict[str, Any]], None],
    trials: dict[str, list[Job]],
    settings: RunSettings,
    opts: ExecOptions,
    on_event: TrialEvent | None = None,
    scheduler: Any = None,
    plain: bool = False,
    sweep: str | None = None,
) -> list[TrialEnd]:
    """Run `trials` (key -> its jobs) as Tune trials of `trainable` on Ray; returns how each
    ended. The Tune experiment lives under `ResultsRoot.ray_storage(sweep)`.

    plain: every trial is one single-worker job that the trial runs itself (no TorchTrainer, the
    trial holds the job's CPU and GPU share); Tune restarts a trial that died, and reuses trial
    actors, so imports and cached frozen models survive from one job to the next."""
    init_ray(opts)
    specs = trial_specs(trials, settings, opts, plain, sweep)
    workers = max(sum(j.workers for j in s.jobs) for s in specs)
    resources = TRIAL_RESOURCES
    if plain:
        resources = {"CPU": opts.cpus_per_worker}
        if opts.gpus > 0:
            resources["GPU"] = 1.0 / opts.jobs_per_gpu
    experiment = ResultsRoot(settings.results).ray_storage(sweep)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"spec": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            max_concurrent_trials=concurrency(workers, opts),
            reuse_actors=plain,
        ),
        run_config=tune.RunConfig(
            name=f"{settings.suite}-{settings.run_id}-{int(time.time())}",
            storage_path=str(experiment),
            callbacks=[_TrialEvents(on_event)],
            # A failing trial is recorded and the others go on. Plain trials are restarted when
            # their process dies (TorchTrainers restart their own workers).
            failure_config=tune.FailureConfig(
                max_failures=opts.max_failures if plain else 0, fail_fast=False
            ),
            verbose=0,
        ),
    )
    ray_log_to_file(ResultsRoot(settings.results).ray_log(settings.run_id))
    before = placement_groups.snapshot()
    try:
        grid = tuner.fit()
    finally:
        placement_groups.remove_leaked(before)
    ends = {}
    for r in grid:
        key = r.config["spec"].key
        last = r.metrics or {}
        if r.error is not None:
            ends[key] = TrialEnd(key, "failed", one_line(r.error))
        elif last.get("failed"):  # the trial reported its job's failure and ended
            ends[key] = TrialEnd(key, "failed", last["failed"])
        else:
            ends[key] = TrialEnd(key, "done" if last.get("trial_done") else "stopped")
    return [ends.get(k, TrialEnd(k, "failed", "never ran")) for k in trials]
