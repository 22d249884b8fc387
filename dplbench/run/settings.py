"""How jobs run, resolved from a `LaunchRequest` (dplbench/request.py) in one place:

- `RunSettings`: what every worker needs (where data and results live, how it reads and logs,
  the LLM cache, plug-in modules); travels with each trial to the workers.
- `ExecOptions`: what the driver needs (the cluster's resources, packing, resume and leases).

Neither is part of a job's identity: the same job run with other settings is the same work.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

from dpl.methods import plugin_modules
from dplbench.request import LaunchRequest


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class RunSettings:
    data: str  # shards root (dplbench data convert --out)
    results: str  # results root
    suite: str = "adhoc"
    run_id: str = field(default_factory=new_run_id)
    eval_batch_size: int = 64
    loader_workers: int = 2
    on_data_error: str = "raise"  # or "skip": corrupt samples are skipped and counted
    bf16: bool | None = None  # None: bf16 autocast on GPU, fp32 on CPU
    fail_job: str | None = None  # testing hook (run/train_loop.py): "<job prefix>[@<epoch>][:kill]"
    val_each_epoch: bool = False  # evaluate the few-shot val split after every epoch (sweeps)
    # Also score the test split after every epoch, for the report's selection-gap table only.
    eval_every_epoch: bool = False
    # torch.compile of the training step: None (eager), a mode ("reduce-overhead": CUDA graphs,
    # the launch-bound DPL step's case; "default"; "max-autotune") or a backend ("aot_eager").
    # Falls back to eager, with a warning, if compiling fails.
    compile: str | None = None
    llm_cache: tuple[str, ...] = ()  # the LLM cache directories of llamp / dpl-release jobs
    plugins: tuple[str, ...] = ()  # modules that register methods (imported on every worker)

    @classmethod
    def of(cls, request: LaunchRequest, suite: str, **extra) -> RunSettings:
        return cls(
            data=request.data,
            results=request.results,
            suite=suite,
            loader_workers=request.how.loader_workers,
            on_data_error=request.policy.on_data_error,
            eval_every_epoch=request.policy.eval_every_epoch,
            compile=request.how.compile or None,
            llm_cache=request.llm_caches,
            plugins=plugin_modules(request.what.plugins),
            fail_job=os.environ.get("DPLBENCH_FAIL_JOB"),  # testing hook: make one job fail
            **extra,
        )


@dataclass(frozen=True)
class ExecOptions:
    gpus: int = 0  # GPUs to use in all; 0: CPU workers
    cpus: int | None = None  # CPUs to use in all (default: all of this machine / the cluster's)
    cpus_per_worker: float = 1.0
    address: str | None = None  # join a running cluster ("auto", "ray://…", "host:port")
    max_failures: int = 2  # restarts of one job from its last checkpoint
    resume: bool = False
    use_ray: bool = True  # False: jobs run one after the other in this process
    on_lease: str = "skip"  # a job another driver is running: "skip" it or "wait" for it
    jobs_per_gpu: int = 1  # jobs packed onto one GPU (fractional GPU resources)
    fuse: int = 1  # jobs trained together as one batched model (plan/fusion.py)
    # Single-worker jobs as plain Tune trials (no TorchTrainer: seconds less start-up per job),
    # restarted by Tune from their checkpoints in the results root.
    plain_trials: bool = True
    lease_timeout: float = 300.0  # seconds without renewal after which a lease is stale

    @classmethod
    def of(cls, request: LaunchRequest, jobs_per_gpu: int, fuse: int = 1) -> ExecOptions:
        h = request.how
        return cls(
            gpus=h.gpus,
            cpus=h.cpus,
            address=h.address,
            resume=request.policy.resume,
            use_ray=h.use_ray,
            on_lease=request.policy.on_lease,
            jobs_per_gpu=jobs_per_gpu,
            fuse=fuse,
        )
