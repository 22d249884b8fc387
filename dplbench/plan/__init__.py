"""Planning: what a command will run, pure and Ray-free (plan/plan.py: one `Plan` shape; its
units, what runs as one Tune trial, plan/units.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dplbench.plan.plan import Plan
    from dplbench.request import LaunchRequest


def plan_of(request: LaunchRequest, kind: str | None = None) -> Plan:
    """The plan a request asks for: an ablation's variants (`what.ablation`), a sweep (`sweep`:
    tune's --param or --space), else the selected suite (default: smoke). `kind` ("suite",
    "sweep", "ablation") insists on one (`tune` without --param says what it lacks)."""
    what, caches = request.what, request.llm_caches
    kind = kind or ("ablation" if what.ablation else "sweep" if request.sweep.asked else "suite")
    if kind == "ablation":
        from dplbench.plan.ablations import ablation_plan, load_ablation

        return ablation_plan(load_ablation(what.ablation), what, caches)
    if kind == "sweep":
        from dplbench.plan.sweeps import sweep_plan

        return sweep_plan(what, request.sweep, caches)
    from dplbench.plan.suites import load_suite

    return load_suite(what.suite or "smoke", what, caches)
