"""What a sweep runs, pure and Ray-free: named parameters, search spaces, settings, trials.

A sweep is a list of parameter *settings* (a grid, and/or seeded random draws from a space YAML).
One setting is one trial: the jobs of the selected suite / datasets / seeds with the setting applied
as config overrides. How trials run is run/sweep.py; their records and tables are results/sweeps.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dplbench.errors import ConfigError
from dplbench.plan.config import (
    CONFIG_DIR,
    deep_merge,
    load_yaml,
    nested,
    parse_value,
    split_list,
    typed,
)
from dplbench.plan.jobs import Job
from dplbench.plan.plan import Plan, SuiteData
from dplbench.plan.suites import load_suite
from dplbench.request import SCHEDULERS, Selection, SweepSelection

SWEEP_DIR = CONFIG_DIR / "sweeps"


# ---- named parameters ----------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A friendly sweep parameter: the MethodConfig keys it sets, its value type, default grid."""

    name: str
    keys: tuple[str, ...]
    kind: str  # float | int | bool | str | importance | yaml (raw dotted keys)
    default: tuple[Any, ...] = ()
    help: str = ""

    def value(self, raw: Any) -> Any:
        """A command-line or YAML value -> the value stored in a setting (JSON-friendly)."""
        if self.kind == "importance":
            parts = raw if isinstance(raw, list | tuple) else str(raw).split("+")
            return "+".join(str(v).strip() for v in parts if str(v).strip())
        value = parse_value(raw)
        try:
            if self.kind == "float":
                return float(value)
            if self.kind == "int":
                if float(value) != int(float(value)):
                    raise ValueError
                return int(float(value))
            if self.kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError
                return value
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name}: expected {self.kind}, got {raw!r}") from None
        return str(value) if self.kind == "str" else value

    def config_value(self, value: Any) -> Any:
        """A setting's value as the MethodConfig takes it."""
        return value.split("+") if self.kind == "importance" else value


PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("p_max", ("iwtd.p_max",), "float", (0.3, 0.4, 0.5, 0.6), "IWTD top drop rate"),
        Param("p_min", ("iwtd.p_min",), "float", (0.0, 0.05, 0.1, 0.2), "IWTD lowest rate"),
        Param("entropy_weight", ("rer.weight",), "float", (0.0, 0.01, 0.05, 0.1, 0.2), "w_res"),
        Param("lambda0", ("rer.lambda0",), "float", (0.05, 0.1, 0.2, 0.3), "RER λ0"),
        Param("fixed_lambda", ("rer.fixed_lambda",), "bool", (False, True), "λ fixed/annealed"),
        Param(
            "importance",
            ("iwtd.importance",),
            "importance",
            ("cls", "self", "cross", "cls+self", "cls+cross", "self+cross", "cls+self+cross"),
            "IWTD scores, e.g. cls+self, or uniform",
        ),
        Param("drop_mode", ("iwtd.drop_mode",), "str", ("noise", "zero"), "IWTD drop mode"),
        Param("sigma", ("iwtd.sigma",), "float", (0.01, 0.03, 0.1), "noise σ (drop_mode=noise)"),
        Param("mag_weight", ("mag.weight",), "float", (0.0, 10.0, 30.0, 50.0), "MAG loss weight"),
        # One prompt length / depth for both encoders; the _text/_vision names set one each.
        Param("n_ctx", ("prompts.n_ctx_text", "prompts.n_ctx_vision"), "int", (2, 4, 8, 16)),
        Param("n_ctx_text", ("prompts.n_ctx_text",), "int", (2, 4, 8, 16)),
        Param("n_ctx_vision", ("prompts.n_ctx_vision",), "int", (2, 4, 8, 16)),
        Param("depth", ("prompts.depth_text", "prompts.depth_vision"), "int", (1, 3, 6, 9)),
        Param("depth_text", ("prompts.depth_text",), "int", (1, 3, 6, 9)),
        Param("depth_vision", ("prompts.depth_vision",), "int", (1, 3, 6, 9)),
        Param("lr", ("optim.lr",), "float", (2e-4, 5e-4, 2e-3), "learning rate"),
    )
}


def param(name: str) -> Param:
    """A named parameter, or a raw dotted MethodConfig key (checked when the jobs resolve)."""
    if name in PARAMS:
        return PARAMS[name]
    if "." in name and all(name.split(".")):
        return Param(name, (name,), "yaml")
    raise ConfigError(
        f"unknown parameter {name!r}; choose one of: {', '.join(PARAMS)} (or a dotted config key "
        "such as iwtd.p_max)"
    )


def overrides_of(setting: dict[str, Any]) -> dict[str, Any]:
    """{name: value} -> nested MethodConfig overrides."""
    flat = {}
    for name, value in setting.items():
        p = param(name)
        flat.update({key: p.config_value(value) for key in p.keys})
    return nested(flat, "sweep setting")


def best_overrides(setting: dict[str, Any]) -> list[str]:
    """The setting as `key=value` items ready for `dplbench run ... key=value`."""
    items = []
    for name, value in setting.items():
        p = param(name)
        for key in p.keys:
            if p.kind == "importance":
                items.append(f"{key}=[{','.join(value.split('+'))}]")
            elif isinstance(value, list | dict):
                items.append(f"{key}={json.dumps(value)}")
            elif isinstance(value, bool):
                items.append(f"{key}={str(value).lower()}")
            else:
                items.append(f"{key}={value}")
    return items


# ---- search spaces -------------------------------------------------------------------------

DISTRIBUTIONS = ("uniform", "loguniform", "choice")


@dataclass(frozen=True)
class SweepSpace:
    """A space YAML (configs/sweeps/*.yaml): what to sweep, and defaults for the command line."""

    params: dict[str, Any]  # name -> [grid values] | {uniform|loguniform|choice: args}
    description: str = ""
    suite: str | None = None
    method: str | None = None
    datasets: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    num_samples: int = 1  # random draws per grid point
    scheduler: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def load_space(path: str) -> SweepSpace:
    p = Path(path)
    if not p.is_file():
        p = SWEEP_DIR / f"{path}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(f.stem for f in SWEEP_DIR.glob("*.yaml")))
        raise ConfigError(f"sweep space {path!r} not found; choose one of: {known} or a YAML path")
    space = typed(SweepSpace, load_yaml(p), str(p))
    if not isinstance(space.params, dict) or not space.params:
        raise ConfigError(f"{p}: needs a non-empty `params:` mapping")
    return space


def expand(space: dict[str, Any], num_samples: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """Grid lists are crossed (Tune's grid_search); for each grid point `num_samples` draws of the
    distributions. Draws come from a seeded RNG, so the same space gives the same settings (that is
    what lets --resume find its trials). Duplicate settings are dropped."""
    grid, dists = {}, {}
    for name, spec in space.items():
        p = param(name)
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise ConfigError(f"{name}: expected a list of values or one of {DISTRIBUTIONS}")
            dists[name] = (p, *next(iter(spec.items())))
        else:
            values = spec if isinstance(spec, list | tuple) else [spec]
            if not values:
                raise ConfigError(f"{name}: no values")
            grid[name] = [p.value(v) for v in values]
    rng = random.Random(seed)
    out, seen = [], set()
    for point in itertools.product(*grid.values()):
        for _ in range(max(1, num_samples) if dists else 1):
            setting = dict(zip(grid, point))
            for name, (p, dist, args) in dists.items():
                draw = _draw(rng, dist, args, name)
                # 4 significant digits: readable in tables, and precise enough for a sweep.
                draw = float(f"{draw:.4g}") if isinstance(draw, float) else draw
                setting[name] = p.value(draw)
            key = json.dumps(setting, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(setting)
    return out


def _draw(rng: random.Random, dist: str, args: Any, name: str) -> Any:
    if dist == "choice":
        return rng.choice(list(args))
    lo, hi = (float(a) for a in args)
    if dist == "loguniform":
        if lo <= 0:
            raise ConfigError(f"{name}: loguniform needs positive bounds")
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.uniform(lo, hi)


def cli_space(params: Sequence[str], values: str | None) -> dict[str, list]:
    """`--param NAME` (its default grid), `--param NAME=v1,v2` or one `--param NAME --values`."""
    if values is not None and len(params) != 1:
        raise ConfigError("--values goes with exactly one --param; use --param NAME=v1,v2")
    space = {}
    for item in params:
        name, sep, raw = item.partition("=")
        p = param(name.strip())
        raw = raw if sep else values
        if raw is None:
            if not p.default:
                raise ConfigError(f"{p.name}: give values, e.g. --param {p.name}=0.1,0.2")
            space[p.name] = list(p.default)
        else:
            space[p.name] = split_list(raw)
    return space


# ---- trials --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    key: str  # stable: hash of the setting (resume finds trials by it)
    setting: dict[str, Any]
    jobs: tuple[Job, ...]


@dataclass(frozen=True)
class Sweep:
    """A sweep's settings: each a trial of jobs (its plan is `Plan(..., sweep=this)`)."""

    name: str
    suite: str
    params: tuple[str, ...]
    trials: tuple[Trial, ...]
    scheduler: str = "asha"  # fifo | asha
    grace_period: int = 1  # ASHA: epochs before the first stop decision
    reduction_factor: int = 2  # ASHA: keep the top 1/rf at each rung (2 suits sweeps of ~10)

    @property
    def epochs(self) -> int:
        return max(j.epochs for t in self.trials for j in t.jobs)

    @property
    def jobs(self) -> tuple[Job, ...]:
        return tuple(j for t in self.trials for j in t.jobs)


def trial_key(setting: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:8]


def make_sweep(
    settings: list[dict[str, Any]],
    suite: str,
    selection: Selection | Mapping[str, Any] | None,
    name: str | None = None,
    llm_cache: str | None = None,
    **options: Any,
) -> Plan:
    """The plan of a sweep: every setting resolved into its trial's jobs (bad keys or values fail
    here, before anything runs). Only training jobs take part: xd/dg evaluation jobs have no
    validation split."""
    if not settings:
        raise ConfigError("the sweep has no settings")
    selection = Selection.coerce(selection)
    params = tuple(dict.fromkeys(k for s in settings for k in s))
    if name is None:
        # The sweep's name hashes what it sweeps over (not the LLM cache's path): the same
        # command finds its records again (--resume).
        what = {k: v for k, v in asdict(selection).items() if v not in ((), None, {})}
        blob = json.dumps([suite, what, settings], sort_keys=True, default=str)
        name = f"{'-'.join(params)[:40]}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
    trials, data = [], SuiteData()
    for setting in settings:
        over = deep_merge(selection.overrides, overrides_of(setting))
        s = load_suite(suite, replace(selection, overrides=over), llm_cache)
        data = s.data
        jobs = tuple(
            replace(j, params={**setting, "sweep": name})
            for j in s.jobs
            if j.source is None and j.trains
        )
        if not jobs:
            raise ConfigError(f"suite {suite}: no training jobs to sweep (zsclip or xd/dg only?)")
        trials.append(Trial(trial_key(setting), setting, jobs))
    sweep = Sweep(name, Path(suite).stem, params, tuple(trials), **options)
    jobs = tuple(j for t in trials for j in t.jobs)
    return Plan(name, jobs, data, sweep=sweep, suite_name=sweep.suite)


def sweep_plan(
    selection: Selection, words: SweepSelection, llm_cache: str | Sequence[str] | None = None
) -> Plan:
    """A sweep's plan from `dplbench tune`'s words: `--param NAME[=v1,v2]` (or one `--values`)
    or a space YAML (`--space`), over the selected suite (default: the space's, else smoke) and
    method (default: the space's, else dpl)."""
    spec = load_space(words.space) if words.space else None
    if words.param and spec:
        raise ConfigError("give --param or --space, not both")
    if words.param:
        grid = cli_space(words.param, words.values)
    elif spec:
        grid = spec.params
    else:
        raise ConfigError(
            f"say what to sweep: --param NAME or --space FILE; names: {', '.join(PARAMS)}"
        )
    spec = spec or SweepSpace(params=grid)
    sched = words.scheduler or spec.scheduler or "asha"
    if sched not in SCHEDULERS:
        raise ConfigError(f"--scheduler {sched!r}: choose fifo or asha")
    selection = replace(
        selection,
        methods=(words.method or spec.method or "dpl",),
        datasets=selection.datasets or tuple(spec.datasets),
        seeds=selection.seeds or tuple(spec.seeds),
        overrides=deep_merge(spec.overrides, selection.overrides),
    )
    return make_sweep(
        expand(grid, words.num_samples or spec.num_samples),
        selection.suite or spec.suite or "smoke",
        selection,
        name=words.name,
        llm_cache=llm_cache,
        scheduler=sched,
        grace_period=words.grace_period,
        reduction_factor=words.reduction_factor,
    )
