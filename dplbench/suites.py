"""Suites (configs/suites/*.yaml) expand into jobs; a job's id is the hash of its resolved work.

A job is (method, train data, evaluations, seed, workers, resolved method config). The id hashes all
of that and nothing else (not the suite or protocol name), so the same work has the same id in every
suite and `--resume` can find it. xd and dg share one ImageNet training job per (method, seed); each
of their targets is an evaluation job that loads that job's checkpoint and never retrains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpl.methods import METHODS, method_config, to_dict
from dplbench.config import CONFIG_DIR, ConfigError, deep_merge, load_yaml
from dplbench.data.datasets import DATASETS

PROTOCOLS = ("base2novel", "fewshot", "xd", "dg", "longtail")
SUITE_DIR = CONFIG_DIR / "suites"
METHOD_DIR = CONFIG_DIR / "methods"


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


@dataclass(frozen=True)
class Job:
    suite: str
    protocol: str
    method: str
    seed: int
    config: dict[str, Any]  # the resolved MethodConfig, as a plain dict
    train: TrainData
    evals: tuple[EvalTarget, ...]
    workers: int = 1
    source: str | None = None  # evaluation job: id of the training job whose prompts it loads
    params: dict[str, Any] = field(default_factory=dict)  # sweep parameters (issue: tune)

    @property
    def id(self) -> str:
        work = {
            "method": self.method,
            "seed": self.seed,
            "config": self.config,
            "train": asdict(self.train),
            "evals": [asdict(e) for e in self.evals],
            "workers": self.workers,
            "source": self.source,
        }
        blob = json.dumps(work, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def trains(self) -> bool:
        """Whether this job trains (an evaluation job, or zsclip, does not)."""
        return self.source is None and self.method != "zsclip" and self.epochs > 0

    @property
    def epochs(self) -> int:
        return int(self.config["optim"]["epochs"])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["id"] = self.id
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        d = {k: v for k, v in d.items() if k != "id"}
        d["train"] = TrainData(**d["train"])
        d["evals"] = tuple(EvalTarget(**e) for e in d["evals"])
        return cls(**d)


@dataclass(frozen=True)
class Suite:
    name: str
    jobs: tuple[Job, ...]
    data: dict[str, Any]  # e.g. {"synthesize": true} for the smoke suite

    def parts(self) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = {}
        for j in self.jobs:
            out.setdefault(j.protocol, []).append(j)
        return out


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def _suite_file(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = SUITE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown suite {name!r}; choose one of: {', '.join(list_suites())}")
    return path


def resolve_method(
    name: str, *layers: dict[str, Any], dataset: str | None = None
) -> dict[str, Any]:
    """Typed defaults < configs/methods/<name>.yaml < layers...; per-dataset overrides from the
    method file's `datasets:` section apply after the file (e.g. ImageNet's 5 epochs)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS.names())}")
    file_layer = (
        load_yaml(METHOD_DIR / f"{name}.yaml") if (METHOD_DIR / f"{name}.yaml").is_file() else {}
    )
    per_dataset = file_layer.pop("datasets", {}) or {}
    merged: dict[str, Any] = {}
    for layer in (file_layer, per_dataset.get(dataset, {}), *layers):
        merged = deep_merge(merged, layer or {})
    try:
        return to_dict(method_config(name, merged))
    except (ValueError, KeyError) as e:
        raise ConfigError(f"method {name}: {e.args[0] if e.args else e}") from None


def _check_datasets(names: list[str]) -> None:
    for n in names:
        if n not in DATASETS:
            raise ConfigError(
                f"unknown dataset {n!r}; choose one of: {', '.join(DATASETS.names())}"
            )


def _part_jobs(suite: str, spec: dict[str, Any], sel: dict[str, Any]) -> list[Job]:
    """Jobs of one protocol block, restricted by the command line's selections `sel`."""
    protocol = spec.get("protocol")
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"suite {suite}: protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}"
        )
    allowed = {
        "protocol",
        "datasets",
        "source",
        "targets",
        "methods",
        "seeds",
        "shots",
        "imbalance",
        "overrides",
        "workers",
        "description",
        "data",
    }
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(
            f"suite {suite}: unknown key {sorted(unknown)[0]}; valid: {', '.join(sorted(allowed))}"
        )
    methods = sel.get("methods") or spec.get("methods") or ["dpl"]
    seeds = sel.get("seeds") or spec.get("seeds") or [1, 2, 3]
    shots_list = spec.get("shots") or [16]
    workers = int(sel.get("workers") or spec.get("workers") or 1)
    overrides = deep_merge(spec.get("overrides") or {}, sel.get("overrides") or {})
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose one of: {', '.join(METHODS.names())}")

    def pick(names: list[str]) -> list[str]:
        chosen = sel.get("datasets")
        return [n for n in names if not chosen or n in chosen]

    jobs = []
    if protocol in ("xd", "dg"):
        source = spec.get("source", "imagenet")
        targets = spec.get("targets") or []
        _check_datasets([source, *targets])
        targets = pick(targets)
        for m in methods:
            for seed in seeds:
                for shots in shots_list:
                    cfg = resolve_method(m, overrides, dataset=source)
                    train = TrainData(source, shots, seed, "all")
                    src = Job(
                        suite,
                        protocol,
                        m,
                        seed,
                        cfg,
                        train,
                        (EvalTarget(source, "all", "test"),),
                        workers,
                    )
                    jobs.append(src)
                    jobs += [
                        Job(
                            suite,
                            protocol,
                            m,
                            seed,
                            cfg,
                            train,
                            (EvalTarget(t, "all", "test"),),
                            workers,
                            source=src.id,
                        )
                        for t in targets
                    ]
        return jobs

    datasets = spec.get("datasets") or []
    _check_datasets(datasets)
    for d in pick(datasets):
        for m in methods:
            cfg = resolve_method(m, overrides, dataset=d)
            for seed in seeds:
                for train, evals in _PER_DATASET[protocol](d, seed, shots_list, spec):
                    jobs.append(Job(suite, protocol, m, seed, cfg, train, evals, workers))
    return jobs


def _base_novel(d: str) -> tuple[EvalTarget, ...]:
    return (EvalTarget(d, "base"), EvalTarget(d, "novel"))


# What one dataset trains on and is evaluated on, per protocol (PROTOCOLS.md §2); xd and dg,
# which train once and evaluate elsewhere, are expanded above.
_PER_DATASET = {
    "base2novel": lambda d, seed, shots, spec: [
        (TrainData(d, k, seed, "base"), _base_novel(d)) for k in shots
    ],
    "fewshot": lambda d, seed, shots, spec: [
        (TrainData(d, k, seed, "all"), (EvalTarget(d),)) for k in shots
    ],
    # Long-tail: base classes of the full train split, made imbalanced.
    "longtail": lambda d, seed, shots, spec: [
        (TrainData(d, None, seed, "base", float(spec.get("imbalance", 10))), _base_novel(d))
    ],
}


def load_suite(name: str, selections: dict[str, Any] | None = None) -> Suite:
    """Expand a suite into its jobs. selections: methods, datasets, seeds, workers (restrict or
    replace the file's lists) and overrides (nested method-config overrides for every job)."""
    sel = selections or {}
    _check_datasets(sel.get("datasets") or [])
    path = _suite_file(name)
    spec = load_yaml(path)
    suite_name = path.stem
    data = spec.get("data") or {}
    blocks = []
    for inc in spec.get("include") or []:
        inc_spec = load_yaml(_suite_file(inc))
        blocks.append(inc_spec)
        data = {**(inc_spec.get("data") or {}), **data}
    if "protocol" in spec:
        blocks.append({k: v for k, v in spec.items() if k != "include"})
    if not blocks:
        raise ConfigError(f"suite {suite_name}: needs a protocol or an include list")
    jobs: dict[str, Job] = {}
    for block in blocks:
        for job in _part_jobs(suite_name, block, sel):
            jobs.setdefault(job.id, job)  # xd and dg share their ImageNet training jobs
    if not jobs:
        raise ConfigError(f"suite {suite_name}: the selection leaves no jobs")
    return Suite(suite_name, tuple(jobs.values()), data)
