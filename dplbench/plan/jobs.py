"""A job: one method trained (or loaded) and evaluated. Its id is the hash of its resolved work.

A job is (method, train data, evaluations, seed, workers, resolved `MethodConfig`, the LLM
knowledge it reads, and the sweep or ablation it belongs to). The id hashes all of that and
nothing else: not the suite or protocol name, so the same work has the same id in every suite and
`--resume` finds it; and nothing about where files live or how the harness runs the job (cache
paths, loader workers, per-epoch test scores, tracking, packing, compile: run settings). A sweep
trial or ablation variant whose config equals a plain run's is still its own job, so no run's
rows are ever shadowed by another's. An evaluation job (xd, dg) names the training job whose
prompts it loads (`source`) and never trains.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from dpl.config import MethodConfig
from dpl.typed import from_dict, to_dict


@dataclass(frozen=True)
class TrainData:
    dataset: str
    shots: int | None  # None: the full train split (long-tail subsets start from it)
    seed: int
    subsample: str = "all"  # all | base | novel
    imbalance: float | None = None


@dataclass(frozen=True)
class EvalTarget:
    dataset: str
    subsample: str = "all"
    split: str = "test"


def estimated_train_samples(job: Job) -> int:
    """The size of a job's training set from the dataset registry (before conversion)."""
    from dplbench.data.datasets import DATASETS

    spec = DATASETS.get(job.train.dataset)
    t = job.train
    classes = spec.classes if t.subsample == "all" else math.ceil(spec.classes / 2)
    if t.imbalance is not None:  # long-tail: the base classes of the full split, imbalanced
        n_max = spec.train_size / max(spec.classes, 1)
        return sum(
            math.ceil(max(n_max * t.imbalance ** (-i / max(classes - 1, 1)), 1))
            for i in range(classes)
        )
    if t.shots:
        return classes * t.shots
    return spec.train_size * classes // max(spec.classes, 1)


@dataclass(frozen=True)
class Job:
    suite: str
    protocol: str
    method: str
    seed: int
    config: MethodConfig
    train: TrainData
    evals: tuple[EvalTarget, ...]
    workers: int = 1
    source: str | None = None  # evaluation job: id of the training job whose prompts it loads
    params: dict[str, Any] = field(default_factory=dict)  # sweep / ablation labels
    llm: dict[str, Any] | None = None  # the LLM cache's identity (plan/llm.py), LLM methods only

    @functools.cached_property
    def id(self) -> str:
        """The hash of the work (computed once: a Job and its fields are never changed)."""
        work = {
            "method": self.method,
            "seed": self.seed,
            "config": work_config(self.config),
            "train": _plain(self.train),
            "evals": [_plain(e) for e in self.evals],
            "workers": self.workers,
            "source": self.source,
        }
        if self.params:  # sweep / ablation context (absent for plain runs: their ids stay)
            work["params"] = self.params
        if self.llm is not None:
            work["llm"] = self.llm
        blob = json.dumps(work, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def trains(self) -> bool:
        """Whether this job trains (an evaluation job, or a method that trains nothing such as
        zero-shot CLIP: its registry trait, does not)."""
        from dpl.methods import METHODS

        return self.source is None and METHODS.get(self.method).trains and self.epochs > 0

    @property
    def epochs(self) -> int:
        """Epochs the job trains; with a step budget (optim.iterations) what that takes on the
        real dataset's size (the train loop counts on the converted data)."""
        o = self.config.optim
        if not o.iterations:
            return o.epochs
        n = estimated_train_samples(self)
        keep = o.last_batch == "keep" or n < o.batch_size
        per_epoch = math.ceil(n / o.batch_size) if keep else n // o.batch_size
        return math.ceil(o.iterations / max(per_epoch, 1))

    def describe(self) -> dict[str, Any]:
        """The job as plain JSON-ready data (the `config` column of its result rows)."""
        d = asdict(self)
        d["config"] = to_dict(self.config)
        d["id"] = self.id
        return d

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> Job:
        """The job a result row's `config` describes; its id must come out the same (the row was
        written by a code version whose config fields this one reads differently otherwise).
        Rows written before run settings left the config (`eval_every_epoch`, `llm.cache`) are
        read with those keys dropped; their recorded ids are kept by the rows and not checked."""
        d = dict(d)
        config, legacy = _migrate(dict(d["config"]))
        d["config"] = config
        job = cls(
            suite=d["suite"],
            protocol=d["protocol"],
            method=d["method"],
            seed=d["seed"],
            config=from_dict(MethodConfig, d["config"]),
            train=TrainData(**d["train"]),
            evals=tuple(EvalTarget(**e) for e in d["evals"]),
            workers=d["workers"],
            source=d.get("source"),
            params=d.get("params") or {},
            llm=d.get("llm"),
        )
        if "id" in d and not legacy and job.id != d["id"]:
            raise ValueError(
                f"job {d['id']}: its recorded config rebuilds as job {job.id} with this code "
                "version (a config field changed since it ran)"
            )
        return job


# Config keys that say where files live, never what is computed: left out of a job's id.
# llm.model says which LLM a cache must come from: the job's LLM identity (`llm`) is what it read.
NOT_WORK = {"backbone": ("cache_dir",), "llm": ("cache", "model")}
# Keys a config no longer has (they became run settings); rows written with them stay readable.
RETIRED = ("eval_every_epoch",)


def work_config(config: MethodConfig) -> dict[str, Any]:
    """The resolved config as a job's id hashes it (read-only: jobs that differ only in seed
    share one config object, and its dict is computed once)."""
    hit = _WORK.get(id(config))
    if hit is not None and hit[0] is config:
        return hit[1]
    out = to_dict(config)
    for section, keys in NOT_WORK.items():
        out[section] = {k: v for k, v in out[section].items() if k not in keys}
    if len(_WORK) > 65536:  # bounded; an entry holds its config, so its id is not reused
        _WORK.clear()
    _WORK[id(config)] = (config, out)
    return out


_WORK: dict[int, tuple[MethodConfig, dict[str, Any]]] = {}
_PLAIN: dict[int, tuple[Any, dict[str, Any]]] = {}


def _plain(data: TrainData | EvalTarget) -> dict[str, Any]:
    """asdict of a job's data, once per object (sweeps copy jobs that share them); read-only."""
    hit = _PLAIN.get(id(data))
    if hit is None or hit[0] is not data:
        if len(_PLAIN) > 65536:
            _PLAIN.clear()
        hit = _PLAIN[id(data)] = (data, to_dict(data))  # flat: as asdict gives it
    return hit[1]


def _migrate(config: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    legacy = any(k in config for k in RETIRED) or bool((config.get("llm") or {}).get("cache"))
    config = {k: v for k, v in config.items() if k not in RETIRED}
    if config.get("llm"):
        config["llm"] = {**config["llm"], "cache": None}
    return config, legacy
