"""How jobs run: where data and results live and how workers read (`RunSettings`), and what the
cluster offers (`ExecOptions`). Neither is part of a job's identity: the same job run with other
settings is the same work."""

from __future__ import annotations

from dataclasses import dataclass, field

from dplbench.results.store import new_run_id


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
    # torch.compile of the training step: None (eager), a mode ("reduce-overhead": CUDA graphs,
    # the launch-bound DPL step's case; "default"; "max-autotune") or a backend ("aot_eager").
    # Falls back to eager, with a warning, if compiling fails.
    compile: str | None = None


@dataclass(frozen=True)
class ExecOptions:
    gpus: int = 0  # GPUs to use in all; 0: CPU workers
    cpus: int | None = None  # CPUs to use in all (default: all of this machine / the cluster's)
    cpus_per_worker: float = 1.0
    address: str | None = None  # join a running cluster ("auto", "ray://…", "host:port")
    max_failures: int = 2  # Train restarts of one job from its last checkpoint
    resume: bool = False
    use_ray: bool = True  # False: jobs run one after the other in this process
    on_lease: str = "skip"  # a job another driver is running: "skip" it or "wait" for it
    jobs_per_gpu: int = 1  # jobs packed onto one GPU (fractional GPU resources)
    # Single-worker jobs as plain Tune trials (no TorchTrainer: seconds less start-up per job),
    # restarted by Tune from their checkpoints in the results root.
    plain_trials: bool = True
    lease_timeout: float = 300.0  # seconds without renewal after which a lease is stale
