"""Defaults that come from the environment, read when they are asked for (when a request is
built, when a command reads results), never when a module is imported: a notebook that sets
$DPLBENCH_RESULTS after `import dplbench` gets it. A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DATA_ENV = "DPLBENCH_DATA"
RESULTS_ENV = "DPLBENCH_RESULTS"
LLM_CACHE_ENV = "DPLBENCH_LLM_CACHE"
DEFAULT_LLM_CACHE = "llm-cache"


def data_root() -> str:
    """The shards root: $DPLBENCH_DATA, else ./shards."""
    return os.environ.get(DATA_ENV) or "shards"


def results_root() -> str:
    """The results root: $DPLBENCH_RESULTS, else ./results."""
    return os.environ.get(RESULTS_ENV) or "results"


def llm_caches(chosen: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """--llm-cache (one or more), else $DPLBENCH_LLM_CACHE, else ./llm-cache; absolute, so that
    every worker reads the same directories (on a cluster: shared storage)."""
    if isinstance(chosen, str):
        chosen = (chosen,)
    paths = tuple(chosen or ()) or (os.environ.get(LLM_CACHE_ENV) or DEFAULT_LLM_CACHE,)
    return tuple(str(Path(p).resolve()) for p in paths)
