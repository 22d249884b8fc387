"""`LaunchRequest`: everything `run`, `tune` and `ablate` are asked to do, typed and frozen.

    what    Selection: the suite and how the command line restricts it (datasets, seeds, workers,
            method-config overrides); the sweep or ablation itself is the plan (plan/)
    where   data (shards root) and results (results root): local paths or URIs
    how     resources and execution: GPUs, CPUs, DDP workers, loaders, packing, compile, Ray
    policy  resume, bad data, leases, tracking, the LLM cache, per-epoch test scores
    output  dry run, output format
    sweep   `tune`'s own words: the parameters and values (or a space YAML), the scheduler

The command line builds one from one shared set of options (cli/options.py), generated from the
fields below: a new execution option is one field here, with its help text, and every command has
it. A notebook builds one directly and hands it to `dplbench.run.execute`, which does every
pre-run check the command line gets:

    import dplbench
    request = dplbench.LaunchRequest.of(suite="smoke")
    result = dplbench.execute(dplbench.plan_of(request), request)

Torch-, Ray- and Typer-free, and below plan/ (plan/ reads the selection; this module reads no
plan): the command line imports it before it knows what it will run. Defaults that come from the
environment ($DPLBENCH_DATA, $DPLBENCH_RESULTS, $DPLBENCH_LLM_CACHE) are read when a request is
built (dplbench/defaults.py), not when this module is imported.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dplbench import defaults
from dplbench.errors import ConfigError


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flags", "--" + f.name.replace("_", "-")).split("/")[0]


def _fits(value: Any, tp: Any) -> bool:
    """Whether `value` is of the request field type `tp` (int, float, str, bool, X | None,
    tuple[X, ...], dict)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def check_types(group: Any) -> None:
    """Every field of a request group is of its declared type: one line naming the option."""
    hints = typing.get_type_hints(type(group))
    for f in dataclasses.fields(group):
        value = getattr(group, f.name)
        if isinstance(value, list):  # lists from Python callers: the tuples they mean
            value = tuple(value)
            object.__setattr__(group, f.name, value)
        if not _fits(value, hints[f.name]):
            raise ConfigError(f"{_flag(f)} {value!r}: expected {_kind(hints[f.name])}")


_KINDS = {int: "an integer", float: "a number", str: "text", bool: "true or false"}


def _kind(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return "a list of names" if args[0] is str else "a list of integers"
    return _KINDS.get(tp, getattr(tp, "__name__", str(tp)))


def option(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A request field that is also a command-line option. cli: `flags` ("--ray/--no-ray"),
    `kind` ("csv", "ints": a comma list on the command line; "multi": repeatable), `shared`
    (False: only the commands that name it take it)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class Selection:
    suite: str | None = option(
        None, "suite name (configs/suites) or a YAML path (default: the command's)"
    )
    methods: tuple[str, ...] = option(
        (), "comma list: restrict or replace the suite's methods", kind="csv", shared=False
    )
    datasets: tuple[str, ...] = option((), "comma list: restrict the suite's datasets", kind="csv")
    seeds: tuple[int, ...] = option((), "comma list of seeds", kind="ints")
    workers: int | None = option(None, "DDP workers per job")
    plugins: tuple[str, ...] = option(
        (), "a module that registers methods (repeatable; also $DPLBENCH_PLUGINS)",
        flags="--plugin", kind="multi",
    )  # fmt: skip
    overrides: dict[str, Any] = option({}, "method config overrides key=value", shared=False)
    # `dplbench ablate NAME` (its argument, not an option): the plan is the ablation's variants
    ablation: str | None = option(
        None, "ablation: configs/ablations/<name> or a YAML path", shared=False
    )

    def __post_init__(self) -> None:
        check_types(self)
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"--seeds {','.join(map(str, self.seeds))}: each 0 or more")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: at least 1")

    @classmethod
    def coerce(cls, value: Selection | Mapping[str, Any] | None) -> Selection:
        """A Selection from itself, None, or a mapping of its fields (lists become tuples):
        `load_suite("smoke", {"methods": ["coop"], "seeds": [1]})`."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise ConfigError(
                f"unknown selection {sorted(unknown)[0]!r}; valid: {', '.join(names)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


@dataclass(frozen=True)
class Where:
    """None: the environment's default, read when the request is built."""

    data: str | None = option(None, f"shards root (default ${defaults.DATA_ENV}, else ./shards)")
    results: str | None = option(
        None, f"results root (default ${defaults.RESULTS_ENV}, else ./results)"
    )

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "data", self.data or defaults.data_root())
        object.__setattr__(self, "results", self.results or defaults.results_root())


# torch.compile's modes, and the backends the train loop takes by name (run/train_loop.py).
COMPILE_CHOICES = (
    "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs",
    "aot_eager", "eager", "inductor",
)  # fmt: skip
COMPILE_HELP = (
    "torch.compile the training step: reduce-overhead (CUDA graphs: the launch-bound DPL step), "
    "default, max-autotune, or a backend (aot_eager); eager if it fails"
)


@dataclass(frozen=True)
class How:
    gpus: int = option(0, "GPUs to use in all (one per worker)")
    cpus: int | None = option(None, "CPUs to use in all (default: all)")
    address: str | None = option(None, "join a running Ray cluster (e.g. auto)")
    loader_workers: int = option(2, "data loader processes per worker")
    eval_batch_size: int = option(
        64, "test images per evaluation batch per worker (lower it when evaluation runs out of "
        "GPU memory; the scores do not depend on it)",
    )  # fmt: skip
    jobs_per_gpu: str = option(
        "1",
        "jobs sharing one GPU (fractional GPU resources); auto: as many as the calibrated peak "
        "memory fits, capped by the CPUs per GPU (dplbench bench model calibrates)",
    )
    fuse: str = option(
        "1",
        "K: train up to K jobs that differ only in seed or in shape-neutral values (lr, loss "
        "weights, IWTD rates, ...) in one process as one batched model over the shared frozen "
        "CLIP; auto: K from the bench calibration's memory per run",
    )
    compile: str | None = option(None, COMPILE_HELP)
    use_ray: bool = option(True, "--no-ray: jobs one after the other in this process",
                           flags="--ray/--no-ray")  # fmt: skip

    def __post_init__(self) -> None:
        check_types(self)
        if self.gpus < 0 or (self.cpus is not None and self.cpus < 1):
            raise ConfigError(f"--gpus {self.gpus} / --cpus {self.cpus}: GPUs >= 0, CPUs >= 1")
        if self.loader_workers < 0:
            raise ConfigError(f"--loader-workers {self.loader_workers}: 0 or more")
        if self.eval_batch_size < 1:
            raise ConfigError(f"--eval-batch-size {self.eval_batch_size}: at least 1")
        for flag, value in (("--jobs-per-gpu", self.jobs_per_gpu), ("--fuse", self.fuse)):
            _positive_or_auto(flag, value)
        if self.compile is not None and self.compile not in COMPILE_CHOICES:
            raise ConfigError(
                f"--compile {self.compile!r}: choose one of {', '.join(COMPILE_CHOICES)}"
            )


def _positive_or_auto(flag: str, value: str) -> None:
    if value == "auto":
        return
    try:
        ok = int(value) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{flag} {value!r}: a positive integer or auto")


TRACKERS = ("mlflow", "tensorboard")


@dataclass(frozen=True)
class Policy:
    resume: bool = option(False, "run only jobs (trials, variants) without results; failed and "
                          "interrupted ones continue from their last checkpoint")  # fmt: skip
    on_data_error: str = option(
        "raise",
        "a corrupt image: raise (the job fails, naming shard and sample) or skip it (counted in "
        "the rows' `skipped` column and shown in the report)",
    )
    on_lease: str = option(
        "skip", "a job another driver is running on this results root: skip it or wait for it"
    )
    track: str | None = option(
        None, "stream per-epoch metrics and final scores to mlflow or tensorboard"
    )
    track_uri: str | None = option(
        None, "MLflow tracking URI / TensorBoard log folder (default: under --results)"
    )
    llm_cache: tuple[str, ...] = option(
        (),
        "an LLM cache of llamp / dpl-release jobs (dplbench llm cache; repeatable: each job reads "
        "the first made from its LLM with its recipe; default $DPLBENCH_LLM_CACHE or ./llm-cache)",
        flags="--llm-cache",
        kind="multi",
    )
    compact: bool = option(
        True,
        "at the end, compact the result tables' partitions this run wrote to (dplbench results "
        "compact: many small files become one, read in one go); --no-compact leaves them",
        flags="--compact/--no-compact",
    )
    eval_every_epoch: bool = option(
        False,
        "also score the test split after every epoch, for the report's selection-gap table only "
        "(never selects anything; does not change the job or its training)",
    )

    def __post_init__(self) -> None:
        check_types(self)
        choices = {"on_data_error": ("raise", "skip"), "on_lease": ("skip", "wait")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                flag = "--" + key.replace("_", "-")
                raise ConfigError(f"{flag} {getattr(self, key)!r}: choose {' or '.join(allowed)}")
        if self.track is not None and self.track not in TRACKERS:
            raise ConfigError(f"--track {self.track!r}: choose one of {', '.join(TRACKERS)}")


SCHEDULERS = ("fifo", "asha")


@dataclass(frozen=True)
class SweepSelection:
    """`dplbench tune`'s own words (plan/sweeps.py `sweep_plan`); unused by `run` and `ablate`."""

    param: tuple[str, ...] = option(
        (), "parameter to sweep: NAME (its default grid), NAME=v1,v2 (repeatable)",
        kind="multi", shared=False,
    )  # fmt: skip
    values: str | None = option(None, "comma list of values for the one --param", shared=False)
    space: str | None = option(None, "search space: configs/sweeps/<name> or a YAML", shared=False)
    method: str | None = option(None, "method (default: the space's, else dpl)", shared=False)
    num_samples: int | None = option(None, "random draws per grid point (spaces)", shared=False)
    scheduler: str | None = option(
        None, "fifo | asha (default: the space's, else asha)", shared=False
    )
    grace_period: int = option(1, "ASHA: epochs before the first stop", shared=False)
    reduction_factor: int = option(2, "ASHA: keep the best 1/rf at a rung", shared=False)
    name: str | None = option(
        None, "sweep name (default: params + hash of the sweep)", shared=False
    )

    @property
    def asked(self) -> bool:
        """Whether a sweep was asked for (tune's --param or --space)."""
        return bool(self.param or self.space)

    def __post_init__(self) -> None:
        check_types(self)
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler!r}: choose fifo or asha")


@dataclass(frozen=True)
class Output:
    dry_run: bool = option(False, "plan only: list the jobs (and trials), the checks, the estimate")
    format: str = option("table", "--dry-run output: table | json (one object per job)")

    def __post_init__(self) -> None:
        check_types(self)
        if self.format not in ("table", "json"):
            raise ConfigError(f"--format {self.format!r}: choose table or json")


GROUPS = {
    "what": Selection,
    "where": Where,
    "how": How,
    "policy": Policy,
    "output": Output,
    "sweep": SweepSelection,
}


@dataclass(frozen=True)
class LaunchRequest:
    what: Selection = field(default_factory=Selection)
    where: Where = field(default_factory=Where)
    how: How = field(default_factory=How)
    policy: Policy = field(default_factory=Policy)
    output: Output = field(default_factory=Output)
    sweep: SweepSelection = field(default_factory=SweepSelection)

    @classmethod
    def of(cls, **values: Any) -> LaunchRequest:
        """A request from flat field names: `LaunchRequest.of(gpus=8, suite="base2novel")`."""
        groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        owner = {f.name: g for g, c in GROUPS.items() for f in dataclasses.fields(c)}
        for key, value in values.items():
            if key not in owner:
                raise ConfigError(f"unknown request field {key!r}; valid: {', '.join(owner)}")
            groups[owner[key]][key] = value
        return cls(**{g: GROUPS[g](**kw) for g, kw in groups.items()})

    def replace(self, **values: Any) -> LaunchRequest:
        """A copy with some flat fields changed."""
        flat = {
            f.name: getattr(getattr(self, g), f.name)
            for g, cls in GROUPS.items()
            for f in dataclasses.fields(cls)
        }
        flat.update(values)
        return LaunchRequest.of(**flat)

    @property
    def data(self) -> str:
        from dplbench import storage

        return storage.resolve(self.where.data)

    @property
    def results(self) -> str:
        from dplbench import storage

        return storage.resolve(self.where.results)

    @property
    def root(self):
        """The results root as the object that names every file under it (results/root.py)."""
        from dplbench.results.root import ResultsRoot

        return ResultsRoot(self.results)

    @property
    def llm_caches(self) -> tuple[str, ...]:
        """--llm-cache (repeatable), else $DPLBENCH_LLM_CACHE, else ./llm-cache; absolute, so
        that every worker reads the same directories (on a cluster: shared storage)."""
        return defaults.llm_caches(self.policy.llm_cache)


def request_fields() -> list[tuple[dataclasses.Field, Any]]:
    """(field, its type) of every request field, in declaration order (cli/options.py)."""
    out = []
    for cls in GROUPS.values():
        hints = typing.get_type_hints(cls)
        out += [(f, hints[f.name]) for f in dataclasses.fields(cls)]
    return out


def fields_of(group: type) -> tuple[str, ...]:
    """The field names of one request group (a command's own options: `tune`'s SweepSelection)."""
    return tuple(f.name for f in dataclasses.fields(group))
