"""Jobs of the LLM-source methods (llamp, dpl-release): what they read from an LLM cache, and
which caches a plan still lacks (pure: reads manifests only).

A job enters its id with the cache's identity (dpl/llm/manifest.py: the LLM, how the cache was
made, the hashes of the class lists and templates it reads), never the cache's path: the same
knowledge in another directory is the same work. The path itself is a run setting
(`--llm-cache`), checked against the identity when the job's model is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpl.llm.manifest import MANIFEST, CacheError, identity, read_manifest
from dpl.methods import METHODS
from dplbench.errors import ConfigError
from dplbench.plan.jobs import Job

# The LLM each release caches with: DroPLe launch.sh --model_base; LLaMP configs/llava/*.yml
# model_params.model_base. Only a suggestion for the command that makes a missing cache.
RELEASE_LLM = {
    "dpl-release": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llamp": "meta-llama/Llama-2-7b-chat-hf",
}
DEFAULT_CACHE = "llm-cache"
MISSING = {"cache": "missing"}  # the identity of a job whose cache is not built yet


def uses_llm(method: str) -> bool:
    return METHODS.get(method).uses_llm


def cache_dir(chosen: str | None = None) -> str:
    """--llm-cache, else $DPLBENCH_LLM_CACHE, else ./llm-cache; absolute, so that every worker
    reads the same directory (on a cluster: shared storage)."""
    path = chosen or os.environ.get("DPLBENCH_LLM_CACHE") or DEFAULT_CACHE
    return str(Path(path).resolve())


def datasets_read(job: Job) -> list[str]:
    return sorted({e.dataset for e in job.evals} | ({job.train.dataset} if job.trains else set()))


def job_identity(job: Job, cache: str) -> dict[str, Any]:
    """The identity of what `job` reads from the cache at `cache` (MISSING when there is none)."""
    try:
        manifest = read_manifest(cache)
    except CacheError:
        return dict(MISSING)
    return identity(manifest, datasets_read(job))


def check_no_cache_path(cfg: Any, method: str) -> None:
    if cfg.llm.cache is not None:
        raise ConfigError(
            f"method {method}: llm.cache names where a cache lives, which is not part of a job; "
            f"pass it as --llm-cache {cfg.llm.cache}"
        )


def missing_caches(jobs: Sequence[Job], cache: str) -> list[str]:
    """One line per LLM cache the jobs need but lack (or that lacks datasets they read), with
    the command that makes it."""
    need: set[str] = set()
    model = None
    for j in jobs:
        if j.llm is None:
            continue
        need.update(d for d in datasets_read(j) if (j.llm.get("datasets") or {}).get(d) is None)
        model = model or j.config.llm.model or RELEASE_LLM.get(j.method, "<HF id>")
    if not need:
        return []
    have = set(read_manifest(cache)["datasets"]) if (Path(cache) / MANIFEST).is_file() else set()
    missing = ",".join(sorted(need - have) or sorted(need))
    return [
        f"LLM cache {cache} lacks {missing}; make it with: dplbench llm cache "
        f"--model {model} --datasets {missing} --out {cache}"
    ]


def check_cache(job: Job, cache: str) -> None:
    """At build time: the cache at `cache` holds what the job was planned with."""
    found = job_identity(job, cache)
    if found != job.llm:
        raise CacheError(
            f"job {job.id}: the LLM cache at {cache} is not the one it was planned with "
            f"(planned {job.llm}, found {found}); pass the same --llm-cache to plan and run"
        )
