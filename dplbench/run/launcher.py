"""The driver's side of Ray: jobs launched as Ray Tune trials (what runs inside a trial, a job
in the trial's process or one Ray Train run per job, is run/trials.py). The driver imports
neither torch nor the model library: only the trial processes build models.

`dplbench run`, `tune` and `ablate` all go through `launch` (one Tuner: trial resources,
concurrency, failure handling, events to the driver, placement-group cleanup). Each trial is one
unit of the plan (plan/units.py: a job, a fused group, a sweep setting) with one typed, frozen
`TrialSpec` (the unit, its jobs' checkpoint runs, the run settings, the resources); what runs in
it is run/trials.py, its reports cross back as typed events through run/tune_io.py.

A job runs in its trial's own process (a plain trial: single-worker jobs) or as one Ray Train
`TorchTrainer` (DDP workers, worker restarts). Both keep their checkpoints in the results root
(`CheckpointStore`, one per job run) and restart from there: a plain trial that died is restarted
by Tune, a DDP worker group by Train (`FailureConfig(max_failures)`), and `--resume` continues each
job's run whose newest checkpoint is the latest (`ResultsRoot.resume_run`).

Why Tune: it is Ray's supported way to run many Train runs at once (docs/cluster.md §4), with
per-trial failure isolation and callbacks for the live table. Tune does not count the Train
workers' resources, so `concurrency` bounds the trials by what their workers need, and each trial
itself holds only a token of memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune as tune

from dplbench import storage
from dplbench.errors import ConfigError
from dplbench.plan.jobs import Job
from dplbench.plan.units import Unit
from dplbench.run import interrupt, placement_groups, tune_io
from dplbench.run.events import Sink
from dplbench.run.settings import ExecOptions, RunSettings

log = logging.getLogger(__name__)

# A trial that only drives TorchTrainers reserves a token of memory and no CPU (Tune refuses an
# empty request, and a CPU sliver per trial would keep whole workers off a node).
TRIAL_RESOURCES = {"memory": 2**20}
# Train's controller retries a worker group that cannot start forever unless limited
# (docs/cluster.md §4).
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
    """One Tune trial's work, typed: its unit (plan/units.py), the checkpoint run each job writes
    to, how they run. Travels to the trial's process as its config (`config["spec"]`)."""

    unit: Unit
    run_names: tuple[str, ...]  # per job of the unit, in order: its CheckpointStore run
    settings: RunSettings
    resources: WorkerResources
    plain: bool  # single-worker jobs in the trial's own process (no TorchTrainer)
    pg_dir: str  # where its Train runs announce their placement groups

    @property
    def key(self) -> str:
        return self.unit.key

    def run_name(self, job: Job) -> str:
        return self.run_names[self.unit.jobs.index(job)]


# ---- the driver ----------------------------------------------------------------------------


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
    # --address, else RAY_ADDRESS (what `ray job submit` sets), else a Ray of our own, even where
    # `ray start` left one running on this machine (joining that one is --address auto).
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(
            address="local",
            num_cpus=opts.cpus,
            num_gpus=opts.gpus,
            include_dashboard=dashboard,
            **kw,
        )


@dataclass
class RaySession:
    """The Ray of one `run.execute`: whether it started a local cluster, and stopped it (then the
    command line may end its process without Ray's slow teardown)."""

    started: bool = False
    stopped_local_cluster: bool = False


@contextlib.contextmanager
def session(opts: ExecOptions, log: Path, dashboard: bool = True) -> Iterator[RaySession]:
    """Ray for one `run.execute`: Ray's own messages go to `log` from the start (its token-
    authentication warning included); a local cluster started here stops when the block ends,
    every process at once."""
    import ray

    ray_log_to_file(log)
    state = RaySession(started=not ray.is_initialized())
    init_ray(opts, dashboard)
    try:
        yield state
    finally:
        if state.started:
            state.stopped_local_cluster = shutdown()


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


def shutdown() -> bool:
    """`ray.shutdown()` of a local cluster, its processes stopped all at once: Ray stops them one
    after another, allowing each a second (seconds of a short local run's wall time). Returns
    whether it stopped a local cluster of this process's own."""
    import ray
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    if node is None or not hasattr(node, "all_processes"):  # not ours, or Ray changed
        ray.shutdown()
        return False
    worker._global_node = None  # ray.shutdown() below disconnects; the processes are ours
    try:
        ray.shutdown()
    finally:
        if node.is_head():
            node.destroy_external_storage()
        _stop_all([i.process.pid for infos in node.all_processes.values() for i in infos])
        node.all_processes.clear()
    return True


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


def trial_resources(opts: ExecOptions):
    """What a plain trial asks Tune for: a job's CPU and GPU share; a fused group what its
    members' solo trials would have had on CPUs (their CPUs, as many as the cluster has), and
    one device on GPUs."""
    import ray

    have = ray.cluster_resources().get("CPU", 1.0)

    def per_trial(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        unit = config["spec"].unit
        k = len(unit.jobs) if unit.fused else 1
        bundle = {"CPU": min(k * opts.cpus_per_worker, max(have, opts.cpus_per_worker))}
        if opts.gpus > 0:
            bundle["GPU"] = 1.0 if unit.fused else 1.0 / opts.jobs_per_gpu
        return tune.PlacementGroupFactory([bundle])

    return per_trial


def trial_specs(
    units: Sequence[Unit], settings: RunSettings, opts: ExecOptions, plain: bool, sweep: str | None
) -> list[TrialSpec]:
    """The typed trials of a launch: each job's checkpoint run (fresh, or the one --resume
    continues), the worker resources, where placement groups are announced."""
    root = settings.root
    resources = WorkerResources(
        gpus=opts.gpus,
        gpu_share=1.0 / opts.jobs_per_gpu,
        cpus_per_worker=opts.cpus_per_worker,
        max_failures=opts.max_failures,
        train_storage=root.train_storage(sweep),
    )
    return [
        TrialSpec(
            unit=u,
            run_names=tuple(root.resume_run(j.id, settings.run_id, opts.resume) for j in u.jobs),
            settings=settings,
            resources=resources,
            plain=plain,
            pg_dir=root.placement_groups(settings.run_id, u.key, sweep),
        )
        for u in units
    ]


def launch(
    units: Sequence[Unit],
    settings: RunSettings,
    opts: ExecOptions,
    sink: Sink,
    scheduler: Any = None,
    sweep: str | None = None,
    trainable: Any = None,
) -> None:
    """Run `units` as Tune trials (run/trials.py `unit_trial`) on Ray. Every job of every unit
    ends in exactly one `JobEnded` to `sink` (run/tune_io.py). The Tune experiment lives under
    `ResultsRoot.ray_storage(sweep)`.

    Plain trials (every unit of single-worker jobs that its trial runs itself: no TorchTrainer,
    the trial holds the job's CPU and GPU share) are restarted by Tune when their process dies,
    and reuse trial actors, so imports and cached frozen models survive from one job to the
    next. `trainable` replaces run/trials.py `unit_trial` (tests probe the launcher with one)."""
    from dplbench.run.trials import unit_trial

    if not units:
        return
    init_ray(opts)
    # A trial reports several kinds of event (run/tune_io.py); only a sweep setting's progress
    # carries ASHA's metric, and ASHA passes over results without it: Tune must not refuse them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    plain = opts.plain_trials and all(u.kind != "setting" for u in units)
    plain = plain and all(j.workers == 1 for u in units for j in u.jobs)
    specs = trial_specs(units, settings, opts, plain, sweep)
    # A plain trial is one process, a fused group's too; a setting's jobs each have theirs.
    workers = 1 if plain else max(sum(j.workers for j in u.jobs) for u in units)
    resources = TRIAL_RESOURCES
    if plain:
        resources = trial_resources(opts)
    pg_dirs = {s.key: s.pg_dir for s in specs}

    def trial_ended(key: str, completed: bool) -> None:
        if not completed:  # its Train placement groups may outlive it
            placement_groups.release(pg_dirs[key])
        for f in storage.listdir(pg_dirs[key]):
            storage.remove(f)

    callback = tune_io.TrialCallback({u.key: tuple(j.id for j in u.jobs) for u in units},
                                     sink, trial_ended)  # fmt: skip
    tuner = tune.Tuner(
        tune.with_resources(trainable or unit_trial, resources),
        param_space={"spec": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            max_concurrent_trials=concurrency(workers, opts),
            reuse_actors=plain,
        ),
        run_config=tune.RunConfig(
            name=f"{settings.suite}-{settings.run_id}-{int(time.time())}",
            storage_path=settings.root.ray_storage(sweep),
            callbacks=[callback],
            stop=interrupt.stopper(),  # Ctrl-C / SIGTERM: every trial stops (run/interrupt.py)
            # A failing trial is recorded and the others go on. Plain trials are restarted when
            # their process dies (TorchTrainers restart their own workers).
            failure_config=tune.FailureConfig(
                max_failures=opts.max_failures if plain else 0, fail_fast=False
            ),
            verbose=0,
        ),
    )
    ray_log_to_file(settings.root.ray_log(settings.run_id))
    before = placement_groups.snapshot()
    try:
        tuner.fit()
    finally:
        placement_groups.remove_leaked(before)
    callback.never_ran(pg_dirs, interrupt.requested())
