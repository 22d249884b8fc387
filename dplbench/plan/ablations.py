"""`dplbench ablate NAME`: the paper's ablations, declared in configs/ablations/NAME.yaml.

    description: IWTD importance scores (docs/dpl.md §3)
    suite: base2novel            # the jobs of each variant: this suite's datasets, seeds, shots
    method: dpl                  # default method of the variants
    overrides: {}                # applied to every variant (optional)
    variants:                    # name -> dotted config keys (and optionally `method:`)
      cls: {iwtd.importance: [cls]}
      uniform: {iwtd.importance: [uniform]}

Each variant expands into the suite's jobs with its overrides; precedence: suite < ablation
`overrides` < command line < variant (the variant is what is being ablated, so it wins). Every job
carries params {"ablation": NAME, "variant": V}, which the result rows keep in their `params` column;
the table comes from those rows (results/ablations.py).

Only ablation/variant go into params (not the overrides): the generic report groups sweep rows by
their params keys, and the overrides are in each row's `config` column anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dplbench.errors import ConfigError
from dplbench.plan.config import CONFIG_DIR, deep_merge, load_yaml, nested, typed
from dplbench.plan.jobs import Job
from dplbench.plan.plan import Plan
from dplbench.plan.suites import load_suite
from dplbench.request import Selection

ABLATION_DIR = CONFIG_DIR / "ablations"


@dataclass(frozen=True)
class Variant:
    name: str
    method: str | None  # None: the ablation's method
    overrides: dict[str, Any]  # nested MethodConfig overrides


@dataclass(frozen=True)
class AblationSpec:
    """One ablation file; `variants` maps a name to dotted overrides (and optionally `method`)."""

    variants: dict[str, Any]
    description: str = ""
    suite: str = "base2novel"
    method: str = "dpl"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    suite: str
    method: str
    overrides: dict[str, Any]
    variants: tuple[Variant, ...]


def list_ablations() -> list[str]:
    return sorted(p.stem for p in ABLATION_DIR.glob("*.yaml"))


def load_ablation(name: str) -> Ablation:
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = ABLATION_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown ablation {name!r}; choose one of: {', '.join(list_ablations())}"
        )
    spec = typed(AblationSpec, load_yaml(path), str(path))
    if not isinstance(spec.variants, dict) or not spec.variants:
        raise ConfigError(f"{path}: needs a non-empty `variants:` mapping")
    variants = []
    for vname, body in spec.variants.items():
        if isinstance(vname, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            raise ConfigError(f"{path}: quote the variant name {str(vname).lower()!r}")
        if not isinstance(body or {}, dict):
            raise ConfigError(f"{path}: variant {vname}: expected a mapping")
        body = dict(body or {})
        method = body.pop("method", None)
        variants.append(Variant(str(vname), method, nested(body, f"{path}: variant {vname}")))
    return Ablation(
        name=path.stem,
        description=spec.description,
        suite=spec.suite,
        method=spec.method,
        overrides=nested(spec.overrides, f"{path}: overrides"),
        variants=tuple(variants),
    )


def ablation_plan(
    ab: Ablation,
    selection: Selection | Mapping[str, Any] | None = None,
    llm_cache: str | None = None,
) -> Plan:
    """The plan of an ablation: every variant's jobs (params = ablation + variant), filed under
    the suite they run on. selection: suite (default: the
    ablation's), datasets, seeds, workers, overrides (command line); methods come from variants."""
    selection = Selection.coerce(selection)
    jobs: dict[str, Job] = {}
    name = selection.suite or ab.suite
    base = deep_merge(ab.overrides, selection.overrides)
    data = None
    for v in ab.variants:
        sel = replace(
            selection, methods=(v.method or ab.method,), overrides=deep_merge(base, v.overrides)
        )
        s = load_suite(name, sel, llm_cache)
        data = s.data
        for j in s.jobs:
            if j.id in jobs:  # same work twice would be one job with two labels
                other = jobs[j.id].params["variant"]
                raise ConfigError(
                    f"ablation {ab.name}: variants {other} and {v.name} resolve to the same job"
                )
            jobs[j.id] = replace(j, params={"ablation": ab.name, "variant": v.name})
    return Plan(Path(name).stem, tuple(jobs.values()), data, ablation=ab)


def default_variant(ab: Ablation, protocol: str | None = None) -> str | None:
    """The variant that changes nothing: its method's config with the variant's overrides is
    the config without them (e.g. `annealed` in rer.yaml). What the report compares every
    other variant with (docs/results.md §4); None when no variant is the default."""
    from dplbench.plan.methods import resolve_method

    plain = resolve_method(ab.method, ab.overrides, protocol=protocol)
    for v in ab.variants:
        if (v.method or ab.method) != ab.method:
            continue
        if resolve_method(ab.method, ab.overrides, v.overrides, protocol=protocol) == plain:
            return v.name
    return None
