"""dplbench: Dropout Prompt Learning for CLIP, benchmarked on Ray. For Python use:

    import dplbench
    request = dplbench.LaunchRequest.of(suite="smoke", seeds=(1, 2))
    plan = dplbench.plan_of(request)           # a suite, a sweep (request.sweep) or an ablation
    result = dplbench.execute(plan, request)   # every check the command line makes, then the run
    for row in result.summary_rows():           # per method and dataset: base, novel, HM
        print(row)

Names are imported on first use, so `import dplbench` costs nothing (the command line's --help
stays fast).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "LaunchRequest": "dplbench.request",
    "plan_of": "dplbench.plan",
    "execute": "dplbench.run.executor",
    "ResultsRoot": "dplbench.results.root",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dplbench' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
