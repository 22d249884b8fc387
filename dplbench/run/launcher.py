"""The driver's side of Ray: jobs launched as Ray Tune trials (what runs inside a trial, a job
in the trial's process or one Ray Train run per job, is run/trials.py). The driver imports
neither torch nor the model library: only the trial processes build models.

`dplbench run`, `tune` and `ablate` all go through `launch` (one Tuner: trial resources,
concurrency, failure handling, events to the driver, placement-group cleanup). Each trial gets one
typed, frozen `TrialSpec` (its jobs, their checkpoint runs, the run settings, the resources). Two
kinds of trial run on it (run/trials.py): `job_trial` (one job, `dplbench run` / `ablate`) and
`sweep_trial` (one sweep setting: its jobs at once, the validation objective reported every
epoch for ASHA).

A job runs in its trial's own process (a plain trial: single-worker jobs) or as one Ray Train
`TorchTrainer` (DDP workers, worker restarts). Both keep their checkpoints in the results root
(`CheckpointStore`, one per job run) and restart from there: a plain trial that died is restarted
by Tune, a DDP worker group by Train (`FailureConfig(max_failures)`), and `--resume` continues each
job's run whose newest checkpoint is the latest (`ResultsRoot.resume_run`).

Why Tune: it is Ray's supported way to run many Train runs at once (docs/operating.md §5), with
per-trial failure isolation and callbacks for the live table. Tune does not count the Train
workers' resources, so `concurrency` bounds the trials by what their workers need, and each trial
itself holds only a token of memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune as tune

from dplbench import storage
from dplbench.errors import ConfigError
from dplbench.plan.jobs import Job
from dplbench.results.root import ResultsRoot
from dplbench.run import placement_groups
from dplbench.run.failures import one_line
from dplbench.run.settings import ExecOptions, RunSettings

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


# ---- the driver ----------------------------------------------------------------------------


@dataclass
class TrialEnd:
    key: str
    status: str  # done | stopped | failed
    error: str | None = None
    members: dict[str, dict] | None = None  # a fused group's: job id -> its own last report


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


def init_ray(opts: ExecOptions, dashboard: bool = True) -> None:
    """Join the cluster at opts.address, or start a local one (without the dashboard when the
    run does not need it: plain trials leave no Train placement groups behind)."""
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
        ray.init(num_cpus=opts.cpus, num_gpus=opts.gpus, include_dashboard=dashboard, **kw)


@contextlib.contextmanager
def session(opts: ExecOptions, log: Path, dashboard: bool = True) -> Iterator[None]:
    """Ray for one `run.execute`: Ray's own messages go to `log` from the start (its token-
    authentication warning included); a local cluster started here stops when the block ends,
    every process at once."""
    import ray

    ray_log_to_file(log)
    started = not ray.is_initialized()
    init_ray(opts, dashboard)
    try:
        yield
    finally:
        if started:
            shutdown()


_STOPPED = []  # local clusters this process started and stopped (the CLI exits quickly after)


def _stop_all(pids: list[int]) -> None:
    """SIGTERM the cluster's processes and everything they started (the raylet's agents and
    workers), a moment for those that exit on it, SIGKILL for the rest: the raylet, GCS and
    monitor do not exit on SIGTERM (Ray kills them a second later, one after another)."""
    import psutil  # a Ray dependency

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(pid)
            procs += [top, *top.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=0.3)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=2.0)


def stopped_local_cluster() -> bool:
    return bool(_STOPPED)


def shutdown() -> None:
    """`ray.shutdown()` of a local cluster, its processes stopped all at once: Ray stops them one
    after another, allowing each a second (seconds of a short local run's wall time)."""
    import ray
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    if node is None or not hasattr(node, "all_processes"):  # not ours, or Ray changed
        ray.shutdown()
        return
    worker._global_node = None  # ray.shutdown() below disconnects; the processes are ours
    try:
        ray.shutdown()
    finally:
        if node.is_head():
            node.destroy_external_storage()
        _stop_all([i.process.pid for infos in node.all_processes.values() for i in infos])
        node.all_processes.clear()
        _STOPPED.append(node)


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
    # A plain trial is one process, a fused group's too; a sweep trial's jobs each have theirs.
    workers = 1 if plain else max(sum(j.workers for j in s.jobs) for s in specs)
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
            status = "done" if last.get("trial_done") else "stopped"
            ends[key] = TrialEnd(key, status, members=last.get("members"))
    return [ends.get(k, TrialEnd(k, "failed", "never ran")) for k in trials]
