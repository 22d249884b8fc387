"""How jobs run: views of a `LaunchRequest` (dplbench/request.py), never copies of its fields.

- `RunSettings`: what every worker needs: the request's own `how` and `policy` groups, the data
  root, the LLM caches and plug-ins, this run's id, suite and results root. Frozen and picklable:
  it travels with each trial. A worker-facing option is one request field, read as
  `settings.how.<field>` or `settings.policy.<field>`.
- `ExecOptions`: what the driver needs: the same groups, and what the pre-run checks resolved
  (jobs per GPU, the fused group size).

Neither is part of a job's identity: the same job run with other settings is the same work.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from dpl.methods import plugin_modules
from dplbench.request import How, LaunchRequest, Policy
from dplbench.results.root import ResultsRoot

# The testing hook of run/train_loop.py `fail_if_asked`: "<job id prefix>[@<epoch>][:kill]".
FAIL_JOB_ENV = "DPLBENCH_FAIL_JOB"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _split(values: dict[str, Any], own: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat keyword values -> (request fields, fields of `own`)."""
    mine = {f.name for f in dataclasses.fields(own)}
    return (
        {k: v for k, v in values.items() if k not in mine},
        {k: v for k, v in values.items() if k in mine},
    )


@dataclass(frozen=True)
class RunSettings:
    root: ResultsRoot
    data: str  # shards root (dplbench data convert --out)
    how: How = field(default_factory=How)  # loader workers, compile, ...
    policy: Policy = field(default_factory=Policy)  # bad data, per-epoch test scores, ...
    llm_cache: tuple[str, ...] = ()  # the LLM cache directories of llamp / dpl-release jobs
    plugins: tuple[str, ...] = ()  # modules that register methods (imported on every worker)
    suite: str = "adhoc"
    run_id: str = field(default_factory=new_run_id)
    # What the run itself decides, not the request:
    val_each_epoch: bool = False  # score the few-shot val split after every epoch (sweeps)
    bf16: bool | None = None  # None: bf16 autocast on GPU, fp32 on CPU
    fail_job: str | None = None  # testing hook (FAIL_JOB_ENV)

    @classmethod
    def of(cls, request: LaunchRequest, suite: str = "adhoc", **own: Any) -> RunSettings:
        return cls(
            root=request.root,
            data=request.data,
            how=request.how,
            policy=request.policy,
            llm_cache=request.llm_caches,
            plugins=plugin_modules(request.what.plugins),
            suite=suite,
            **{"fail_job": os.environ.get(FAIL_JOB_ENV), **own},
        )

    @classmethod
    def local(cls, data: str, results: str, **values: Any) -> RunSettings:
        """Settings from flat request fields and settings' own (tests, tools): e.g.
        `RunSettings.local(data, results, loader_workers=0, fail_job=...)`."""
        flat, own = _split(values, cls)
        return cls.of(LaunchRequest.of(data=data, results=results, **flat), **own)


@dataclass(frozen=True)
class ExecOptions:
    how: How = field(default_factory=How)  # GPUs, CPUs, the cluster, Ray or not
    policy: Policy = field(default_factory=Policy)  # resume, leases
    jobs_per_gpu: int = 1  # resolved --jobs-per-gpu (run/preflight.py)
    fuse: int = 1  # resolved --fuse: jobs trained together as one batched model
    cpus_per_worker: float = 1.0
    max_failures: int = 2  # restarts of one job from its last checkpoint
    # Single-worker jobs as plain Tune trials (no TorchTrainer: seconds less start-up per job),
    # restarted by Tune from their checkpoints in the results root.
    plain_trials: bool = True
    lease_timeout: float = 300.0  # seconds without renewal after which a lease is stale

    @classmethod
    def of(cls, request: LaunchRequest, **own: Any) -> ExecOptions:
        return cls(how=request.how, policy=request.policy, **own)

    @classmethod
    def local(cls, **values: Any) -> ExecOptions:
        """Options from flat request fields and the options' own (tests, tools): e.g.
        `ExecOptions.local(cpus=2, use_ray=False, fuse=3)`."""
        flat, own = _split(values, cls)
        return cls.of(LaunchRequest.of(**flat), **own)

    @property
    def gpus(self) -> int:
        return self.how.gpus

    @property
    def cpus(self) -> int | None:
        return self.how.cpus

    @property
    def address(self) -> str | None:
        return self.how.address

    @property
    def use_ray(self) -> bool:
        return self.how.use_ray

    @property
    def resume(self) -> bool:
        return self.policy.resume

    @property
    def on_lease(self) -> str:
        return self.policy.on_lease
