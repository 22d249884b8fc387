"""Jobs of the LLM-source methods (llamp, dpl-release): which cache each reads, and which caches
a suite still lacks (pure: reads manifests only)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from dpl.llm.cache import MANIFEST
from dpl.methods import METHODS
from dplbench.plan.jobs import Job

# The LLM each release caches with: DroPLe launch.sh --model_base; LLaMP configs/llava/*.yml
# model_params.model_base. Only a suggestion for the command that makes a missing cache.
RELEASE_LLM = {
    "dpl-release": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llamp": "meta-llama/Llama-2-7b-chat-hf",
}
DEFAULT_CACHE = "llm-cache"


def uses_llm(method: str) -> bool:
    return bool(getattr(METHODS.get(method).module, "uses_llm", False))


def cache_dir(chosen: str | None = None) -> str:
    """--llm-cache, else $DPLBENCH_LLM_CACHE, else ./llm-cache; absolute, so that every worker
    reads the same directory (on a cluster: shared storage)."""
    path = chosen or os.environ.get("DPLBENCH_LLM_CACHE") or DEFAULT_CACHE
    return str(Path(path).resolve())


def missing_caches(jobs: Sequence[Job]) -> list[str]:
    """One line per cache directory that lacks datasets some job needs, with the command that
    makes them."""
    need: dict[str, set[str]] = {}
    model: dict[str, str] = {}
    for j in jobs:
        if not uses_llm(j.method):
            continue
        d = j.config.llm.cache
        datasets = {e.dataset for e in j.evals} | ({j.train.dataset} if j.trains else set())
        need.setdefault(d, set()).update(datasets)
        model.setdefault(d, j.config.llm.model or RELEASE_LLM.get(j.method, "<HF id>"))
    lines = []
    for d, datasets in sorted(need.items()):
        path = Path(d) / MANIFEST
        have = set(json.loads(path.read_text())["datasets"]) if path.is_file() else set()
        if datasets - have:
            missing = ",".join(sorted(datasets - have))
            lines.append(
                f"LLM cache {d} lacks {missing}; make it with: dplbench llm cache "
                f"--model {model[d]} --datasets {missing} --out {d}"
            )
    return lines
