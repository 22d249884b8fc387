"""Suites (configs/suites/*.yaml) expand into plans of jobs (plan/plan.py, plan/jobs.py).

A suite file is a typed `SuiteSpec`: one protocol block (datasets, methods, seeds, shots, ...) or
an `include:` list of other suites. xd and dg share one ImageNet training job per (method, seed);
each of their targets is an evaluation job that loads that job's checkpoint and never retrains.

The canonical suite of each protocol (configs/suites/<protocol>.yaml) is also the one source of the
protocol's datasets, targets and shot counts that reports aggregate over (`protocol_spec`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dpl.methods import load_plugins, plugin_modules
from dplbench.data.datasets import DATASETS
from dplbench.errors import ConfigError
from dplbench.plan.config import CONFIG_DIR, deep_merge, load_yaml, typed
from dplbench.plan.jobs import EvalTarget, Job, TrainData
from dplbench.plan.llm import cache_dirs, check_no_cache_path, job_identity, uses_llm
from dplbench.plan.methods import check_method, resolve_method
from dplbench.plan.plan import Plan, SuiteData
from dplbench.request import Selection

PROTOCOLS = ("base2novel", "fewshot", "xd", "dg", "longtail")
SUITE_DIR = CONFIG_DIR / "suites"


@dataclass(frozen=True)
class SuiteSpec:
    """One suite file. Lists are defaults that the command line may restrict or replace."""

    description: str = ""
    include: tuple[str, ...] = ()  # other suites whose blocks this one runs
    protocol: str | None = None
    datasets: tuple[str, ...] = ()  # per-dataset protocols
    source: str = "imagenet"  # xd / dg: the training dataset
    targets: tuple[str, ...] = ()  # xd / dg: the evaluated datasets
    methods: tuple[str, ...] = ("dpl",)
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: tuple[int, ...] = (16,)
    imbalance: float = 10.0  # long-tail ratio r
    workers: int = 1  # DDP workers per job
    overrides: dict[str, Any] = field(default_factory=dict)  # method config, every job
    data: SuiteData = field(default_factory=SuiteData)

    @property
    def evaluated(self) -> tuple[str, ...]:
        """The datasets whose accuracy the protocol reports (targets for xd / dg)."""
        return self.targets if self.protocol in ("xd", "dg") else self.datasets


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def suite_file(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = SUITE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown suite {name!r}; choose one of: {', '.join(list_suites())}")
    return path


def load_spec(name: str) -> SuiteSpec:
    path = suite_file(name)
    spec = typed(SuiteSpec, load_yaml(path), f"suite {path.stem}")
    if spec.protocol is not None and spec.protocol not in PROTOCOLS:
        raise ConfigError(
            f"suite {path.stem}: protocol {spec.protocol!r}; choose one of: {', '.join(PROTOCOLS)}"
        )
    if spec.protocol is None and not spec.include:
        raise ConfigError(f"suite {path.stem}: needs a protocol or an include list")
    check_datasets([*spec.datasets, *spec.targets, *([spec.source] if spec.targets else [])])
    for key, values, low in (
        ("shots", spec.shots, 1),
        ("seeds", spec.seeds, 0),
        ("workers", (spec.workers,), 1),
        ("imbalance", (spec.imbalance,), 1),
    ):
        if any(v < low for v in values):
            raise ConfigError(f"suite {path.stem}: {key}={list(values)}: each {low} or more")
    return spec


@functools.cache
def protocol_spec(protocol: str) -> SuiteSpec:
    """The canonical suite of a protocol: its datasets / source / targets / shots."""
    spec = load_spec(protocol)
    if spec.protocol != protocol:
        raise ConfigError(f"configs/suites/{protocol}.yaml must declare protocol: {protocol}")
    return spec


def check_datasets(names: list[str] | tuple[str, ...]) -> None:
    for n in names:
        if n not in DATASETS:
            raise ConfigError(
                f"unknown dataset {n!r}; choose one of: {', '.join(DATASETS.names())}"
            )


def _block_jobs(
    suite: str, spec: SuiteSpec, sel: Selection, llm_cache: tuple[str, ...]
) -> list[Job]:
    """Jobs of one protocol block, restricted by the command line's selection `sel`."""
    methods = sel.methods or spec.methods
    seeds = sel.seeds or spec.seeds
    workers = int(sel.workers or spec.workers)
    overrides = deep_merge(spec.overrides, sel.overrides)
    for m in methods:
        check_method(m)

    def pick(names: tuple[str, ...]) -> list[str]:
        return [n for n in names if not sel.datasets or n in sel.datasets]

    def job(method, seed, cfg, train, evals, source=None) -> Job:
        j = Job(suite, spec.protocol, method, seed, cfg, train, evals, workers, source)
        return replace(j, llm=job_identity(j, llm_cache)) if uses_llm(method) else j

    jobs = []

    def config(method: str, dataset: str, shots: int | None):
        cfg = resolve_method(
            method, overrides, protocol=spec.protocol, dataset=dataset, shots=shots
        )
        check_no_cache_path(cfg, method)
        return cfg

    if spec.protocol in ("xd", "dg"):
        for m in methods:
            for seed in seeds:
                for shots in spec.shots:
                    cfg = config(m, spec.source, shots)
                    train = TrainData(spec.source, shots, seed, "all")
                    src = job(m, seed, cfg, train, (EvalTarget(spec.source),))
                    jobs.append(src)
                    jobs += [
                        job(m, seed, cfg, train, (EvalTarget(t),), source=src.id)
                        for t in pick(spec.targets)
                    ]
        return jobs
    for d in pick(spec.datasets):
        for m in methods:
            for seed in seeds:
                for train, evals in PER_DATASET[spec.protocol](d, seed, spec):
                    jobs.append(job(m, seed, config(m, d, train.shots), train, evals))
    return jobs


def _base_novel(d: str) -> tuple[EvalTarget, ...]:
    return (EvalTarget(d, "base"), EvalTarget(d, "novel"))


# What one dataset trains on and is evaluated on, per protocol (docs/protocols.md §2); xd and dg,
# which train once and evaluate elsewhere, are expanded above.
PER_DATASET: dict[str, Callable[[str, int, SuiteSpec], list[tuple[TrainData, tuple]]]] = {
    "base2novel": lambda d, seed, spec: [
        (TrainData(d, k, seed, "base"), _base_novel(d)) for k in spec.shots
    ],
    "fewshot": lambda d, seed, spec: [
        (TrainData(d, k, seed, "all"), (EvalTarget(d),)) for k in spec.shots
    ],
    # Long-tail: base classes of the full train split, made imbalanced.
    "longtail": lambda d, seed, spec: [
        (TrainData(d, None, seed, "base", float(spec.imbalance)), _base_novel(d))
    ],
}


def load_suite(
    name: str,
    selection: Selection | Mapping[str, Any] | None = None,
    llm_cache: str | Sequence[str] | None = None,
) -> Plan:
    """Expand a suite into its jobs. selection: methods, datasets, seeds, workers (restrict or
    replace the file's lists) and overrides (nested method-config overrides for every job).
    llm_cache: the LLM caches that LLM-source jobs are planned against (default: --llm-cache's)."""
    sel = Selection.coerce(selection)
    load_plugins(
        plugin_modules(sel.plugins)
    )  # the user's own methods (--plugin, $DPLBENCH_PLUGINS)
    check_datasets(sel.datasets)
    llm_cache = cache_dirs(llm_cache)
    suite_name = suite_file(name).stem
    spec = load_spec(name)
    blocks, data = [], spec.data
    for inc in spec.include:
        inc_spec = load_spec(inc)
        blocks.append(inc_spec)
        data = SuiteData(synthesize=data.synthesize or inc_spec.data.synthesize)
    if spec.protocol is not None:
        blocks.append(spec)
    jobs: dict[str, Job] = {}
    for block in blocks:
        for job in _block_jobs(suite_name, block, sel, llm_cache):
            jobs.setdefault(job.id, job)  # xd and dg share their ImageNet training jobs
    if not jobs:
        raise ConfigError(f"suite {suite_name}: the selection leaves no jobs")
    return Plan(suite_name, tuple(jobs.values()), data)
