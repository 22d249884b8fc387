"""Jobs of the LLM-source methods (llamp, dpl-release): which LLM cache each reads, what it reads
from it, and which caches a plan still lacks (pure: reads manifests only).

A run is given one or more caches (`--llm-cache DIR`, repeatable: llamp and dpl-release read
caches of other LLMs and recipes). Each job reads the first whose manifest fits it: made from the
job's LLM (`llm.model`) with its recipe (`llm.recipe`). The job enters its id with that cache's
identity (dpl/llm/manifest.py: the LLM, how the cache was made, the hashes of the class lists and
templates it reads), never the cache's path: the same knowledge in another directory is the same
work. The path itself is a run setting, checked against the identity when the model is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dpl.llm.manifest import CacheError, identity, misfit, read_manifest
from dpl.methods import METHODS
from dplbench import defaults
from dplbench.errors import ConfigError
from dplbench.plan.jobs import Job

MISSING = {"cache": "missing"}  # the identity of a job whose cache is not built yet


def uses_llm(method: str) -> bool:
    return METHODS.get(method).uses_llm


cache_dirs = defaults.llm_caches  # --llm-cache, else $DPLBENCH_LLM_CACHE, else ./llm-cache


def cache_dir(chosen: str | None = None) -> str:
    """The one cache directory of `dplbench llm cache --out` (same defaults)."""
    return cache_dirs(chosen)[0]


def datasets_read(job: Job) -> list[str]:
    return sorted({e.dataset for e in job.evals} | ({job.train.dataset} if job.trains else set()))


def _manifests(caches: Sequence[str]) -> list[tuple[str, dict]]:
    out = []
    for c in caches:
        try:
            out.append((c, read_manifest(c)))
        except CacheError:
            continue
    return out


def choose(model: str | None, recipe: str, caches: Sequence[str]) -> tuple[str, dict] | None:
    """The first cache made from `model` (None: any) with `recipe` (None: none is)."""
    for path, manifest in _manifests(caches):
        if misfit(manifest, model, recipe) is None:
            return path, manifest
    return None


def job_identity(job: Job, caches: str | Sequence[str]) -> dict[str, Any]:
    """The identity of what `job` reads from its cache (MISSING when none fits)."""
    found = choose(job.config.llm.model, job.config.llm.recipe, cache_dirs(caches))
    if found is None:
        return dict(MISSING)
    return identity(found[1], datasets_read(job))


def check_no_cache_path(cfg: Any, method: str) -> None:
    if cfg.llm.cache is not None:
        raise ConfigError(
            f"method {method}: llm.cache names where a cache lives, which is not part of a job; "
            f"pass it as --llm-cache {cfg.llm.cache}"
        )


def missing_caches(jobs: Sequence[Job], caches: str | Sequence[str]) -> list[str]:
    """One line per LLM and recipe the jobs need but no given cache holds (or holds without
    some dataset they read), with the command that makes it."""
    caches = cache_dirs(caches)
    need: dict[tuple[str | None, str], set[str]] = {}
    for j in jobs:
        if j.llm is None:
            continue
        lacking = {d for d in datasets_read(j) if (j.llm.get("datasets") or {}).get(d) is None}
        if lacking:
            need.setdefault((j.config.llm.model, j.config.llm.recipe), set()).update(lacking)
    lines = []
    for (model, recipe), datasets in sorted(need.items(), key=str):
        found = choose(model, recipe, caches)
        out = found[0] if found else caches[0]
        why = "" if found else _why_not(caches, model, recipe)
        lines.append(
            f"no LLM cache for {','.join(sorted(datasets))} ({model or 'any LLM'}, {recipe} "
            f"recipe){why}; make it with: dplbench llm cache --model {model or '<HF id or dir>'} "
            f"--recipe {recipe} --datasets {','.join(sorted(datasets))} --out {out}"
        )
    return lines


def _why_not(caches: Sequence[str], model: str | None, recipe: str) -> str:
    found = _manifests(caches)
    if not found:
        return f" under {', '.join(caches)}"
    path, manifest = found[0]
    return f" ({path}: {misfit(manifest, model, recipe)})"


def cache_for(job: Job, caches: str | Sequence[str]) -> str:
    """At build time: the given cache that holds what the job was planned with."""
    for path in cache_dirs(caches):
        try:
            manifest = read_manifest(path)
        except CacheError:
            continue
        if identity(manifest, datasets_read(job)) == job.llm:
            return path
    raise CacheError(
        f"job {job.id}: no LLM cache under {', '.join(cache_dirs(caches))} holds what it was "
        f"planned with ({job.llm}); pass the same --llm-cache to plan and run"
    )
