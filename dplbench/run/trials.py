"""What runs inside a Tune trial: one unit of the plan (plan/units.py), by its kind.

    job       one job in the trial's own process (`run_in_trial`: single-worker jobs) or as one
              Ray Train run (`fit_job`: the project's only `TorchTrainer`, DDP workers)
    group     a fused group in the trial's own process, one model of members (run/worker.py)
    setting   a sweep setting: its jobs at once, one TorchTrainer each, the validation objective
              reported after every epoch for ASHA

Every report is a typed event through run/tune_io.py; a unit run to its end says so last. The
driver imports this module for `unit_trial` alone: torch and the model library are imported
inside the trials' processes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dplbench.plan.jobs import Job
from dplbench.results.sweeps import objective
from dplbench.run import placement_groups, tune_io
from dplbench.run.events import JobEnded, TrialProgress, job_ended
from dplbench.run.failures import JobFailed, one_line
from dplbench.run.launcher import CONTROLLER_FAILURE_LIMIT, TrialSpec

# ---- the jobs inside a trial ------------------------------------------------------------


class RayTrainContext:
    """WorkerContext on a Ray Train worker. Checkpoints go to the results root like every other
    run's (rank 0 writes; every rank of a restarted group reads the newest). Rank 0 announces its
    placement group (run/placement_groups.py) and, in sweeps, streams each epoch's validation
    accuracy to the trial through `queue`."""

    def __init__(self, job: Job, spec: TrialSpec, queue: Any = None) -> None:
        import ray
        import ray.train
        import ray.train.torch
        import torch

        from dplbench.run.context import CheckpointStore

        tc = ray.train.get_context()
        self.rank, self.world_size = tc.get_world_rank(), tc.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node = ray.get_runtime_context().get_node_id()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.job_id, self.queue = job.id, queue
        self.store = CheckpointStore(spec.settings.root, job.id, spec.run_name(job))
        self.reports = 0
        self.last_val: float | None = None
        if self.rank == 0:
            placement_groups.announce(spec.pg_dir, job.id)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from dplbench.run.context import epoch_done

        if checkpoint_dir and self.rank == 0:  # checkpoint first: a restart starts after it
            self.store.save(int(metrics["epoch"]), checkpoint_dir)
        tune_io.train_report(epoch_done(self.job_id, metrics))
        self.reports += 1
        if metrics.get("val_accuracy") is not None:
            self.last_val = float(metrics["val_accuracy"])
            if self.rank == 0 and self.queue is not None:
                self.queue.put((self.job_id, int(metrics["epoch"]), self.last_val))

    def latest_checkpoint(self) -> str | None:
        return self.store.latest()


def run_in_trial(job: Job, spec: TrialSpec) -> list[dict[str, Any]]:
    """One single-worker job in this Tune trial's process (a plain trial): checkpoints in the
    results root, each epoch reported to Tune (the live table). Returns its result rows."""
    import ray
    import torch

    from dplbench.run.context import LocalContext
    from dplbench.run.worker import run_job

    ctx = LocalContext(
        spec.settings.root,
        job.id,
        spec.run_name(job),
        node=ray.get_runtime_context().get_node_id(),
        on_epoch=tune_io.report,
    )
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    return run_job(job, spec.settings, ctx)


def _train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    from dplbench.run.worker import final_val_accuracy, run_job

    logging.basicConfig(level=logging.WARNING)
    job, spec = config["job"], config["spec"]
    ctx = RayTrainContext(job, spec, config.get("queue"))
    rows = run_job(job, spec.settings, ctx)
    val = None
    if spec.settings.val_each_epoch:
        # Every rank reported the same epochs, so every rank takes this branch or none.
        val = ctx.last_val if ctx.reports else final_val_accuracy(job, spec.settings, ctx)
    return {"rows": rows, "val_accuracy": val} if ctx.rank == 0 else None


def fit_job(job: Job, spec: TrialSpec, queue: Any = None) -> dict[str, Any]:
    """One job as one Ray Train run (the only `TorchTrainer` of the project); returns rank 0's
    rows and, in sweeps, its last validation accuracy. Its epochs reach the trial as events."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = spec.resources
    use_gpu = res.gpus > 0
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpu_share} if use_gpu else {})}
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
            # A sweep setting's jobs report through its queue: the trial reports the objective.
            callbacks=[] if queue is not None else [TuneReportCallback()],
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.return_value or {}


# ---- the units ------------------------------------------------------------------------------


def job_trial(spec: TrialSpec) -> None:
    """One job: in this process (a plain trial) or as a TorchTrainer run. A job that fails ends
    with its one line: retrying the same work would fail the same way (a process that dies is
    restarted by Tune)."""
    (job,) = spec.unit.jobs
    try:
        rows = run_in_trial(job, spec) if spec.plain else fit_job(job, spec).get("rows") or []
        tune_io.report(job_ended(job.id, rows))
    except JobFailed as e:
        tune_io.report(JobEnded(job.id, "failed", str(e)))
    tune_io.report_unit_end()


def group_trial(spec: TrialSpec) -> None:
    """A fused group (plan/fusion.py) in this trial's process: each member reports its epochs
    and its end under its own job id."""
    import ray
    import torch

    from dplbench.run.context import LocalContext
    from dplbench.run.worker import run_group

    node = ray.get_runtime_context().get_node_id()
    jobs = spec.unit.jobs
    contexts = [
        LocalContext(
            spec.settings.root, job.id, spec.run_name(job), node=node, on_epoch=tune_io.report
        )
        for job in jobs
    ]
    if contexts[0].device.type == "cuda":
        torch.cuda.set_device(contexts[0].device)
    else:  # the CPUs the group asked for: those of its members' solo trials
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
    ended = run_group(list(jobs), spec.settings, contexts)
    for job in jobs:
        result = ended[job.id]
        if isinstance(result, JobFailed):
            tune_io.report(JobEnded(job.id, "failed", str(result)))
        else:
            tune_io.report(job_ended(job.id, result))
    tune_io.report_unit_end()


def _value_at(history: dict[int, float], epoch: int) -> float | None:
    """A job's validation accuracy at `epoch` (0-based): the latest at or before it; a job resumed
    past `epoch` has only later values, and gives its earliest."""
    before = [e for e in history if e <= epoch]
    if before:
        return history[max(before)]
    return history[min(history)] if history else None


def setting_trial(spec: TrialSpec) -> None:
    """A sweep setting: its jobs concurrently, one TorchTrainer each. Reports the objective after
    every epoch all its jobs finished (ASHA's time attribute, 1-based), so ASHA can stop it; then
    each job's end. When ASHA stops the trial, Tune kills this actor, and with it the Train
    controllers it owns."""
    from ray.util.queue import Empty, Queue

    jobs: list[Job] = list(spec.unit.jobs)
    queue = Queue(actor_options={"num_cpus": 0})  # 0: never waits for a CPU on a full cluster
    outcomes: dict[str, tuple[str, Any]] = {}

    def fit(job: Job) -> None:
        try:
            outcomes[job.id] = ("done", fit_job(job, spec, queue))
        except BaseException as e:  # noqa: BLE001 - reported by the trial thread below
            outcomes[job.id] = ("failed", e)

    for j in jobs:
        threading.Thread(target=fit, args=(j,), daemon=True).start()
    history: dict[str, dict[int, float]] = {j.id: {} for j in jobs}
    epochs = max(j.epochs for j in jobs)
    reported = 0  # epochs reported to Tune so far

    def ready(job: Job, epoch: int) -> bool:
        h = history[job.id]
        return job.id in outcomes or (bool(h) and max(h) >= min(epoch, job.epochs - 1))

    def progress(epoch: int, vals: dict[str, float | None]) -> None:
        tune_io.report(TrialProgress(spec.key, epoch, objective(vals, jobs), vals))

    while True:
        try:
            job_id, epoch, val = queue.get(timeout=0.5)
            history[job_id][epoch] = val
            continue
        except Empty:
            pass
        for job_id, (status, value) in list(outcomes.items()):
            if status == "failed":
                raise JobFailed(f"job {job_id}: {one_line(value)}")
        # The last epoch is reported once every job has finished.
        while reported < epochs - 1 and all(ready(j, reported) for j in jobs):
            progress(reported + 1, {j.id: _value_at(history[j.id], reported) for j in jobs})
            reported += 1
        if len(outcomes) == len(jobs):
            break
    progress(epochs, {jid: out.get("val_accuracy") for jid, (_, out) in outcomes.items()})
    for job in jobs:
        tune_io.report(job_ended(job.id, outcomes[job.id][1].get("rows") or []))
    tune_io.report_unit_end()


UNIT_TRIALS = {"job": job_trial, "group": group_trial, "setting": setting_trial}


def unit_trial(config: dict[str, Any]) -> None:
    """The one Tune trainable: the unit in `config["spec"]`, by its kind."""
    spec: TrialSpec = config["spec"]
    UNIT_TRIALS[spec.unit.kind](spec)
