"""What runs inside the Tune trials that run/launcher.py launches: `job_trial` (one job, `dplbench
run` and `ablate`) and `sweep_trial` (one sweep setting: its jobs at once, the validation objective
reported every epoch for ASHA). A job runs in the trial's own process (`run_in_trial`, single-worker
jobs of `run`) or as one Ray Train run (`fit_job`: the project's only `TorchTrainer`, DDP workers
with a `RayTrainContext`). The driver imports this module for the trial functions alone: torch
and the model library are imported inside them, in the trial processes."""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray.tune as tune

from dplbench.plan.jobs import Job
from dplbench.results.sweeps import objective, trial_test_metrics
from dplbench.run import placement_groups
from dplbench.run.failures import JobFailed, one_line
from dplbench.run.launcher import CONTROLLER_FAILURE_LIMIT, TrialSpec

# ---- the jobs inside a trial ------------------------------------------------------------


class RayTrainContext:
    """WorkerContext on a Ray Train worker. Checkpoints go to the results root like every other
    run's (rank 0 writes; every rank of a restarted group reads the newest). Rank 0 leaves its
    placement group's id under `pg_dir` (see run/placement_groups.py) and, in sweeps, streams
    each epoch's validation accuracy to the trial through `queue`."""

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
    import torch

    from dplbench.run.context import LocalContext
    from dplbench.run.worker import run_job

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


def job_trial(config: dict[str, Any]) -> None:
    """A Tune trial of `dplbench run`: one job, in this process (a plain trial) or as a
    TorchTrainer run; its epochs reach the live table through Tune, and the last report carries
    where it ran and what it scored. A job that fails ends the trial with its one line: retrying
    the same work would fail the same way (a process that dies is restarted by Tune)."""
    spec: TrialSpec = config["spec"]
    if len(spec.jobs) > 1:
        return group_in_trial(spec)
    (job,) = spec.jobs
    try:
        if spec.plain:
            out = run_in_trial(job, spec)
        else:
            out = fit_job(job, spec, report_to_tune=True)
    except JobFailed as e:
        tune.report({"trial_done": 0, "failed": str(e)})
        return
    rows = (out or {}).get("rows") or []
    tune.report({"trial_done": 1, **job_summary(rows)})


def group_in_trial(spec: TrialSpec) -> None:
    """A fused group (plan/fusion.py) in this Tune trial's process: each member reports its
    epochs under its own job id; the last report says how each member ended."""
    import ray
    import torch

    from dplbench.run.context import LocalContext
    from dplbench.run.fused_loop import run_group

    node = ray.get_runtime_context().get_node_id()
    contexts = [
        LocalContext(
            spec.settings.results,
            job.id,
            spec.run_name(job),
            node=node,
            also_report=lambda m, job=job: tune.report({**m, "job_id": job.id}),
        )
        for job in spec.jobs
    ]
    if contexts[0].device.type == "cuda":
        torch.cuda.set_device(contexts[0].device)
    ended = run_group(list(spec.jobs), spec.settings, contexts)
    members = {
        job_id: {"failed": str(r)} if isinstance(r, JobFailed) else job_summary(r)
        for job_id, r in ended.items()
    }
    tune.report({"trial_done": 1, "members": members})


def job_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a finished job ran and its accuracy per evaluated subsample (the live table)."""
    return {
        "node": rows[0]["node"] if rows else None,
        "accuracy": {r["subsample"]: r["accuracy"] for r in rows},
    }


def _value_at(history: dict[int, float], epoch: int) -> float | None:
    """A job's validation accuracy at `epoch` (0-based): the latest at or before it; a job resumed
    past `epoch` has only later values, and gives its earliest."""
    before = [e for e in history if e <= epoch]
    if before:
        return history[max(before)]
    return history[min(history)] if history else None


def sweep_trial(config: dict[str, Any]) -> None:
    """A Tune trial of `dplbench tune`: the setting's jobs, concurrently, one TorchTrainer each.
    Reports the objective after every epoch all its jobs finished (time attribute `epoch`,
    1-based), so ASHA can stop it; the last report also carries the test metrics and `trial_done`.
    When ASHA stops the trial, Tune kills this actor, and with it the Train controllers it owns."""
    from ray.util.queue import Empty, Queue

    spec: TrialSpec = config["spec"]
    jobs: list[Job] = list(spec.jobs)
    queue = Queue(actor_options={"num_cpus": 0})  # 0: never waits for a CPU on a full cluster
    outcomes: dict[str, tuple[str, Any]] = {}

    def fit(job: Job) -> None:
        try:
            out = fit_job(job, spec, queue)
            outcomes[job.id] = ("done", out)
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
        # The last epoch is reported only with the test metrics, once every job has finished.
        while reported < epochs - 1 and all(ready(j, reported) for j in jobs):
            vals = {j.id: _value_at(history[j.id], reported) for j in jobs}
            tune.report({"epoch": reported + 1, "objective": objective(vals, jobs), "val": vals})
            reported += 1
        if len(outcomes) == len(jobs):
            break
    vals = {jid: out["val_accuracy"] for jid, (_, out) in outcomes.items()}
    rows = {jid: out["rows"] for jid, (_, out) in outcomes.items()}
    tune.report(
        {
            "epoch": epochs,
            "objective": objective(vals, jobs),
            "val": vals,
            "tests": {jid: trial_test_metrics(r) for jid, r in rows.items()},
            **trial_test_metrics([r for rs in rows.values() for r in rs]),
            "trial_done": 1,
        }
    )
