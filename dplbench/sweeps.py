"""`dplbench tune`: hyper-parameter sweeps over the runner's jobs, selected on validation data.

A sweep is a list of parameter *settings* (a grid, and/or random draws from a space YAML). One
setting is one Tune trial; the trial runs the jobs of the selected suite/datasets/seeds with the
setting applied as config overrides, each job its own Ray Train `TorchTrainer` (so multi-worker DDP
per job works as in `dplbench run`), all of a trial's jobs at once in threads of the trial.

Objective (what ASHA and the best configuration use): after every epoch, each job evaluates its
few-shot *validation* split (RunSettings.val_each_epoch); the trial averages that over seeds per
dataset and takes the harmonic mean over datasets, so a setting that wrecks one dataset ranks low.
Base-to-novel jobs train and validate on the base classes only (novel classes are unseen by design),
so the objective never sees a novel class nor any test image. Test accuracy is still evaluated and
recorded for every trial that completes (ASHA-stopped trials stop before testing, by design).

Where things land (results root R, sweep name S):
    R/sweeps/S/trials/<trial>-<run_id>.parquet   one row per (trial, job): status, objective, the
                                                 trial's parameters as columns, val and test metrics
    R/sweeps/S/summary.md, objective.png, best.txt
    R/rows/...                                   the jobs' usual result rows, `params` = setting
    R/ray/sweeps/S/                              Tune experiment + per-job Train checkpoints

Resume: trials are recorded as they end (a Tune callback in the driver), so `--resume` reruns the
same command and skips trials recorded `done` or `stopped`; failed and unfinished ones run again and
their jobs continue from their last per-epoch Train checkpoint. We do not use `Tuner.restore`: our
own records survive a killed driver, and settings are generated deterministically (seeded draws), so
the same command yields the same trial keys.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray.tune as tune
import yaml

from dplbench import results
from dplbench.config import CONFIG_DIR, ConfigError, deep_merge, load_yaml
from dplbench.execution import RayTrainContext
from dplbench.suites import Job, load_suite
from dplbench.train import RunSettings, run_job

log = logging.getLogger(__name__)
SWEEP_DIR = CONFIG_DIR / "sweeps"
TERMINAL_KEEP = ("done", "stopped")  # statuses --resume keeps; failed trials run again


# ---- named parameters ----------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A friendly sweep parameter: the MethodConfig keys it sets, its value type, default grid."""

    name: str
    keys: tuple[str, ...]
    kind: str  # float | int | bool | str | importance | yaml (raw dotted keys)
    default: tuple[Any, ...] = ()
    help: str = ""


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


def parse_value(p: Param, raw: Any) -> Any:
    """A command-line or YAML value -> the value stored in the trial's params (JSON-friendly)."""
    if p.kind == "importance":
        parts = raw if isinstance(raw, list | tuple) else str(raw).split("+")
        return "+".join(str(v).strip() for v in parts if str(v).strip())
    if not isinstance(raw, str):
        value = raw
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
    try:
        if p.kind == "float":
            return float(value)
        if p.kind == "int":
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if p.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{p.name}: expected {p.kind}, got {raw!r}") from None
    if p.kind == "yaml" and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-9 (no dot) as a string
            return float(value)
        except ValueError:
            return value
    return str(value) if p.kind == "str" else value


def overrides_of(setting: dict[str, Any]) -> dict[str, Any]:
    """{name: value} -> nested MethodConfig overrides."""
    out: dict[str, Any] = {}
    for name, value in setting.items():
        p = param(name)
        v = value.split("+") if p.kind == "importance" else value
        for key in p.keys:
            node = out
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = v
    return out


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


def load_space(path: str) -> dict[str, Any]:
    """A space YAML (configs/sweeps/*.yaml or a path): {params: {name: [grid] | {dist: args}},
    and optionally suite, method, datasets, seeds, num_samples, scheduler, overrides}."""
    p = Path(path)
    if not p.is_file():
        p = SWEEP_DIR / f"{path}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(f.stem for f in SWEEP_DIR.glob("*.yaml")))
        raise ConfigError(f"sweep space {path!r} not found; choose one of: {known} or a YAML path")
    spec = load_yaml(p)
    allowed = {"description", "params", "suite", "method", "datasets", "seeds", "num_samples"}
    allowed |= {"scheduler", "overrides"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"{p}: unknown key {sorted(unknown)[0]}; valid: {', '.join(allowed)}")
    if not isinstance(spec.get("params"), dict) or not spec["params"]:
        raise ConfigError(f"{p}: needs a non-empty `params:` mapping")
    return spec


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
            grid[name] = [parse_value(p, v) for v in values]
    rng = random.Random(seed)
    out, seen = [], set()
    for point in itertools.product(*grid.values()):
        for _ in range(max(1, num_samples) if dists else 1):
            setting = dict(zip(grid, point))
            for name, (p, dist, args) in dists.items():
                draw = _draw(rng, dist, args, name)
                # 4 significant digits: readable in tables, and precise enough for a sweep.
                draw = float(f"{draw:.4g}") if isinstance(draw, float) else draw
                setting[name] = parse_value(p, draw)
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
            space[p.name] = [v.strip() for v in _split_values(raw) if v.strip()]
    return space


def _split_values(raw: str) -> list[str]:
    """Comma-separated, but commas inside [...] stay (a list value such as [cls,self])."""
    out, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


# ---- trials --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    key: str  # stable: hash of the setting (resume finds trials by it)
    setting: dict[str, Any]
    jobs: tuple[Job, ...]


@dataclass(frozen=True)
class Sweep:
    name: str
    suite: str
    params: tuple[str, ...]
    trials: tuple[Trial, ...]
    data: dict[str, Any] = field(default_factory=dict)  # the suite's data section
    scheduler: str = "asha"  # fifo | asha
    grace_period: int = 1  # ASHA: epochs before the first stop decision
    reduction_factor: int = 2  # ASHA: keep the top 1/rf at each rung (2 suits sweeps of ~10)

    @property
    def epochs(self) -> int:
        return max(j.epochs for t in self.trials for j in t.jobs)


def trial_key(setting: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:8]


def make_sweep(
    settings: list[dict[str, Any]],
    suite: str,
    selections: dict[str, Any],
    name: str | None = None,
    **options: Any,
) -> Sweep:
    """Resolve every setting into its trial's jobs (bad keys or values fail here, before anything
    runs). Only training jobs take part: xd/dg evaluation jobs have no validation split."""
    if not settings:
        raise ConfigError("the sweep has no settings")
    params = tuple(dict.fromkeys(k for s in settings for k in s))
    if name is None:
        blob = json.dumps([suite, selections, settings], sort_keys=True, default=str)
        name = f"{'-'.join(params)[:40]}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
    trials, data = [], {}
    for setting in settings:
        over = deep_merge(selections.get("overrides") or {}, overrides_of(setting))
        s = load_suite(suite, {**selections, "overrides": over})
        data = s.data
        jobs = tuple(
            replace(j, params={**setting, "sweep": name})
            for j in s.jobs
            if j.source is None and j.trains
        )
        if not jobs:
            raise ConfigError(f"suite {suite}: no training jobs to sweep (zsclip or xd/dg only?)")
        trials.append(Trial(trial_key(setting), setting, jobs))
    return Sweep(name, Path(suite).stem, params, tuple(trials), data, **options)


# ---- objective -----------------------------------------------------------------------------


def harmonic_mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def objective(val_by_job: dict[str, float], jobs: Sequence[Job]) -> float | None:
    """HM over datasets of the seed-mean validation accuracy (see the module docstring)."""
    by_ds: dict[str, list[float]] = {}
    for j in jobs:
        if val_by_job.get(j.id) is not None:
            by_ds.setdefault(j.train.dataset, []).append(val_by_job[j.id])
    return harmonic_mean([sum(v) / len(v) for v in by_ds.values()])


def trial_test_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Test metrics of a trial's rows: base/novel means over datasets (seed-means first) and their
    HM (PROTOCOLS §2: HM of the averages), or the mean accuracy for all-class protocols."""
    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r.get("split", "test") == "test":
            acc.setdefault((r["subsample"], r["dataset"]), []).append(r["accuracy"])

    def mean_over(sub: str) -> float | None:
        per_ds = [sum(v) / len(v) for (s, _), v in acc.items() if s == sub]
        return sum(per_ds) / len(per_ds) if per_ds else None

    base, novel, everything = mean_over("base"), mean_over("novel"), mean_over("all")
    hm = harmonic_mean([base, novel]) if base is not None and novel is not None else None
    return {"test_base": base, "test_novel": novel, "test_hm": hm, "test_accuracy": everything}


# ---- the trial (runs in a Tune trial actor on the cluster) ---------------------------------


class _SweepContext(RayTrainContext):
    """A Train worker's context that also streams each epoch's validation accuracy to its trial."""

    def __init__(self, queue: Any, job_id: str, pg_dir: str) -> None:
        super().__init__()
        self.queue, self.job_id = queue, job_id
        self.last_val: float | None = None
        self.reports = 0
        if self.rank == 0:
            _announce_placement_group(Path(pg_dir), job_id)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        super().report(metrics, checkpoint_dir)  # checkpoint first: a resumed job starts after it
        self.reports += 1
        if metrics.get("val_accuracy") is not None:
            self.last_val = float(metrics["val_accuracy"])
            if self.rank == 0:
                self.queue.put((self.job_id, int(metrics["epoch"]), self.last_val))


def _announce_placement_group(pg_dir: Path, job_id: str) -> None:
    """Leave this Train run's placement group id where the driver finds it.

    Why: when ASHA stops a trial (or a trial fails), Tune kills the trial actor and with it the
    Train controllers it owns and their workers, but not their placement groups (those live as long
    as the driver). Ray 2.60's own PlacementGroupCleaner removes them only if its State API call
    works, and it dies with "Found multiple active Ray instances" when another local Ray runs on the
    machine; the leaked group then holds its CPUs/GPUs and the next trial or `dplbench run` waits
    forever. So the driver removes the trial's groups itself (`release_placement_groups`)."""
    import ray.util

    pg = ray.util.get_current_placement_group()
    if pg is not None:
        pg_dir.mkdir(parents=True, exist_ok=True)
        (pg_dir / f"{job_id}-{pg.id.hex()}").touch()


def release_placement_groups(pg_dir: Path) -> int:
    """Remove the announced placement groups under `pg_dir` that still exist; returns how many."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    removed = 0
    for f in sorted(pg_dir.glob("*-*")) if pg_dir.is_dir() else []:
        pg = PlacementGroup(PlacementGroupID(bytes.fromhex(f.name.rsplit("-", 1)[1])))
        if placement_group_table(pg).get("state") not in (None, "REMOVED"):
            remove_placement_group(pg)
            removed += 1
    if removed:
        log.info("released %d placement groups of %s", removed, pg_dir.name)
    return removed


def _final_val(job: Job, settings: RunSettings, ctx: _SweepContext) -> float:
    """Validation accuracy of the job's final prompts, for a job resumed after its last epoch (its
    epochs ran in an earlier, interrupted sweep, so none reported now)."""
    import torch

    from dpl.methods import build_method, from_dict
    from dpl.methods.config import MethodConfig
    from dplbench.data.view import DatasetView
    from dplbench.train import count_correct, final_state_path

    model = build_method(from_dict(MethodConfig, job.config)).to(ctx.device)
    state = torch.load(final_state_path(settings.results, job.id), map_location=ctx.device)
    model.load_trainable_state(state)
    t = job.train
    view = DatasetView.open(settings.data, t.dataset, "val", t.shots, t.seed, t.subsample, None)
    correct, total = count_correct(model, view, settings, ctx)
    return 100.0 * correct / max(total, 1)


def _sweep_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    logging.basicConfig(level=logging.WARNING)
    job = Job.from_dict(config["job"])
    settings = RunSettings(**config["settings"])
    ctx = _SweepContext(config["queue"], job.id, config["pg_dir"])
    rows = run_job(job, settings, ctx)
    # Every rank reported the same epochs, so every rank takes this branch or none (all-reduce).
    val = ctx.last_val if ctx.reports else _final_val(job, settings, ctx)
    return {"rows": rows, "val_accuracy": val} if ctx.rank == 0 else None


def _fit_job(job: Job, run_name: str, config: dict[str, Any], queue: Any) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ex = config["exec"]
    use_gpu = ex["gpus"] > 0
    per_worker = {"CPU": ex["cpus_per_worker"], **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        _sweep_worker,
        train_loop_config={
            "job": job.to_dict(),
            "settings": config["settings"],
            "queue": queue,
            "pg_dir": config["pg_dir"],
        },
        scaling_config=ScalingConfig(
            num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=ex["storage"],
            # controller_failure_limit: Train's controller retries are unlimited by default
            # (STACK-NOTES); a sweep must fail the trial and go on instead.
            failure_config=FailureConfig(
                max_failures=ex["max_failures"], controller_failure_limit=1
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # enough to resume; sweeps are many
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.return_value


def _value_at(history: dict[int, float], epoch: int) -> float | None:
    """A job's validation accuracy at `epoch` (0-based): the latest at or before it; a job resumed
    past `epoch` has only later values, and gives its earliest."""
    before = [e for e in history if e <= epoch]
    if before:
        return history[max(before)]
    return history[min(history)] if history else None


def _sweep_trial(config: dict[str, Any]) -> None:
    """A Tune trial: the setting's jobs, concurrently, one TorchTrainer each. Reports the objective
    after every epoch all its jobs finished (time attribute `epoch`, 1-based), so ASHA can stop it;
    the last report also carries the test metrics and `trial_done`. When ASHA stops the trial, Tune
    kills this actor, and with it the Train controllers it owns and their placement groups."""
    import ray.tune
    from ray.util.queue import Empty, Queue

    cfg = config["cfg"]
    jobs = [Job.from_dict(d) for d in cfg["jobs"]]
    queue = Queue(actor_options={"num_cpus": 0})  # 0: never waits for a CPU on a full cluster
    outcomes: dict[str, tuple[str, Any]] = {}

    def fit(job: Job, run_name: str) -> None:
        try:
            outcomes[job.id] = ("done", _fit_job(job, run_name, cfg, queue))
        except BaseException as e:  # noqa: BLE001 - reported by the trial thread below
            outcomes[job.id] = ("failed", e)

    threads = [
        threading.Thread(target=fit, args=(j, cfg["run_names"][j.id]), daemon=True) for j in jobs
    ]
    for t in threads:
        t.start()
    history: dict[str, dict[int, float]] = {j.id: {} for j in jobs}
    epochs = max(j.epochs for j in jobs)
    reported = 0  # epochs reported to Tune so far

    def ready(job: Job, epoch: int) -> bool:
        h = history[job.id]
        return job.id in outcomes or (bool(h) and max(h) >= min(epoch, job.epochs - 1))

    while True:
        try:
            job_id, epoch, val = queue.get(timeout=0.5)
            history[job_id][epoch] = val
            continue
        except Empty:
            pass
        for job_id, (status, value) in outcomes.items():
            if status == "failed":
                raise RuntimeError(f"job {job_id}: {type(value).__name__}: {value}") from value
        # The last epoch is reported only with the test metrics, once every job has finished.
        while reported < epochs - 1 and all(ready(j, reported) for j in jobs):
            vals = {j.id: _value_at(history[j.id], reported) for j in jobs}
            ray.tune.report(
                {"epoch": reported + 1, "objective": objective(vals, jobs), "val": vals}
            )
            reported += 1
        if len(outcomes) == len(jobs):
            break
    vals = {jid: out["val_accuracy"] for jid, (_, out) in outcomes.items()}
    rows = {jid: out["rows"] for jid, (_, out) in outcomes.items()}
    ray.tune.report(
        {
            "epoch": epochs,
            "objective": objective(vals, jobs),
            "val": vals,
            "tests": {jid: trial_test_metrics(r) for jid, r in rows.items()},
            **trial_test_metrics([r for rs in rows.values() for r in rs]),
            "trial_done": 1,
        }
    )


# ---- the trial records (written by the driver as each trial ends) --------------------------


def sweep_dir(results_root: str, name: str) -> Path:
    return Path(results_root) / "sweeps" / name


def _trial_rows(
    sweep: str, run_id: str, cfg: dict, status: str, last: dict, error: str | None
) -> list[dict[str, Any]]:
    """One row per (trial, job); the trial's parameters become columns."""
    now = datetime.now(timezone.utc)
    jobs = [Job.from_dict(d) for d in cfg["jobs"]]
    trial_test = {k: last.get(k) for k in ("test_base", "test_novel", "test_hm", "test_accuracy")}
    rows = []
    for j in jobs:
        rows.append(
            {
                "sweep": sweep,
                "trial": cfg["key"],
                "run_id": run_id,
                "status": status,
                "error": error,
                "objective": last.get("objective"),
                "epochs_done": int(last.get("epoch", 0) or 0),
                "epochs": j.epochs,
                **cfg["setting"],
                **trial_test,
                "job_id": j.id,
                "method": j.method,
                "dataset": j.train.dataset,
                "seed": j.seed,
                "job_val_accuracy": (last.get("val") or {}).get(j.id),
                **{f"job_{k}": v for k, v in ((last.get("tests") or {}).get(j.id) or {}).items()},
                "created_at": now,
            }
        )
    return rows


def write_trial(results_root: str, sweep: str, run_id: str, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa

    path = sweep_dir(results_root, sweep) / "trials" / f"{rows[0]['trial']}-{run_id}.parquet"
    return results.write_parquet(pa.Table.from_pylist(rows), path)


def read_trials(results_root: str, sweep: str) -> list[dict[str, Any]]:
    """The latest record of each (trial, job) of a sweep."""
    import duckdb

    files = sweep_dir(results_root, sweep) / "trials"
    if not any(files.glob("*.parquet")):
        return []
    con = duckdb.connect()
    return (
        con.sql(
            f"SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY trial, job_id "
            f"ORDER BY created_at DESC) AS rn FROM read_parquet('{files}/*.parquet', "
            "union_by_name=true)) WHERE rn = 1 ORDER BY trial, job_id"
        )
        .to_arrow_table()
        .to_pylist()
    )


TrialEvent = Callable[[str, str, dict[str, Any]], None]  # (trial key, state, info)
_SINKS: dict[str, TrialEvent] = {}


def _error_text(trial: Any) -> str:
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return next((ln for ln in reversed(lines) if ln.strip()), "error")[:500]
    except (OSError, TypeError):
        return "error"


class _Recorder(tune.Callback):
    """Writes each trial's record the moment it ends (resume needs no driver state) and
    forwards events to the CLI (found by token: Tune pickles its callbacks)."""

    def __init__(self, results_root: str, sweep: str, run_id: str) -> None:
        self.root, self.sweep, self.run_id = results_root, sweep, run_id

    def _emit(self, trial, state: str, info: dict) -> None:
        sink = _SINKS.get(self.run_id)
        if sink is not None:
            sink(trial.config["cfg"]["key"], state, info)

    def _record(self, trial, status: str, error: str | None) -> None:
        last = trial.last_result or {}
        cfg = trial.config["cfg"]
        if status != "done":  # killed mid-run: its Train placement groups may outlive it
            release_placement_groups(Path(cfg["pg_dir"]))
        write_trial(
            self.root,
            self.sweep,
            self.run_id,
            _trial_rows(self.sweep, self.run_id, cfg, status, last, error),
        )
        self._emit(trial, status, {"objective": last.get("objective"), "error": error})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._emit(trial, "running", {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._emit(trial, "running", {k: result.get(k) for k in ("epoch", "objective")})

    def on_trial_complete(self, iteration, trials, trial, **info):
        # TERMINATED without our final report: the scheduler stopped it.
        done = (trial.last_result or {}).get("trial_done")
        self._record(trial, "done" if done else "stopped", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, "failed", _error_text(trial))


# ---- the driver ----------------------------------------------------------------------------


@dataclass
class SweepResult:
    sweep: Sweep
    records: list[dict[str, Any]]  # read_trials
    skipped: list[str]  # trial keys kept from an earlier run (--resume)
    files: dict[str, Path]

    def trials(self) -> list[dict[str, Any]]:
        return summary_rows(self.records, self.sweep.params)

    def best(self) -> dict[str, Any] | None:
        return best_trial(self.trials())


def pending_trials(sweep: Sweep, results_root: str) -> list[Trial]:
    """--resume: the trials not recorded done or stopped (failed and unfinished ones run again)."""
    records = read_trials(results_root, sweep.name)
    keep = {r["trial"] for r in records if r["status"] in TERMINAL_KEEP}
    return [t for t in sweep.trials if t.key not in keep]


def prepare_data(jobs: Sequence[Job], data_root: str, synthesize: bool) -> None:
    """The runner's checks, plus: every training dataset has a validation split (selection never
    reads test data; ImageNet's val is its test set, so it cannot be swept on)."""
    from dplbench.data.errors import DataError
    from dplbench.data.meta import load_meta
    from dplbench.runner import check_data, ensure_selections, ensure_synthetic

    if synthesize:
        ensure_synthetic(data_root)
    check_data(list(jobs), data_root)
    for d in sorted({j.train.dataset for j in jobs}):
        if "val" not in load_meta(data_root, d).splits:
            raise DataError(
                f"{d} has no validation split; sweeps select on validation data only, so leave "
                f"it out (--datasets)"
            )
    ensure_selections(list(jobs), data_root)


def run_sweep(
    sweep: Sweep,
    settings: RunSettings,
    opts: Any,
    on_event: TrialEvent | None = None,
) -> SweepResult:
    """Run (or resume: opts.resume) a sweep on Ray; returns its records and writes its outputs."""
    settings = replace(settings, suite=sweep.suite, val_each_epoch=True)
    trials, skipped = list(sweep.trials), []
    if opts.resume:
        trials = pending_trials(sweep, settings.results)
        skipped = [t.key for t in sweep.trials if t not in trials]
    prepare_data([j for t in sweep.trials for j in t.jobs], settings.data, bool(sweep.data))
    out = sweep_dir(settings.results, sweep.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(_describe(sweep), indent=1, default=str))
    if trials:
        _run_tune(sweep, trials, settings, opts, on_event)
    records = read_trials(settings.results, sweep.name)
    result = SweepResult(sweep, records, skipped, {})
    result.files = write_outputs(result, out)
    return result


def _describe(sweep: Sweep) -> dict[str, Any]:
    return {
        "name": sweep.name,
        "suite": sweep.suite,
        "params": sweep.params,
        "scheduler": sweep.scheduler,
        "grace_period": sweep.grace_period,
        "reduction_factor": sweep.reduction_factor,
        "objective": "HM over datasets of the seed-mean validation accuracy (base classes in "
        "base-to-novel)",
        "trials": [
            {"key": t.key, "setting": t.setting, "jobs": [j.id for j in t.jobs]}
            for t in sweep.trials
        ],
    }


def _concurrency(sweep: Sweep, opts: Any) -> int:
    """Tune does not count the Train workers: bound trials by what their jobs need together."""
    import ray

    need = max(sum(j.workers for j in t.jobs) for t in sweep.trials)
    if opts.gpus > 0:
        return max(1, opts.gpus // need)
    cpus = opts.cpus or int(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // (need * opts.cpus_per_worker)))


def _run_tune(
    sweep: Sweep, trials: list[Trial], settings: RunSettings, opts: Any, on_event: Any
) -> None:
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    # The runner's Ray start-up and its Train run naming (`--resume` reuses a job's newest run).
    from dplbench.execution import TRIAL_RESOURCES, init_ray, run_name

    init_ray(opts)
    storage = Path(settings.results).resolve() / "ray" / "sweeps" / sweep.name
    jobs_storage = storage / "jobs"
    ex = {
        "gpus": opts.gpus,
        "cpus_per_worker": opts.cpus_per_worker,
        # No Train restarts inside a sweep: when Tune kills a stopped trial, its controller would
        # otherwise see the dead workers and create a new placement group just before dying too
        # (leaked, never announced). A failed trial is recorded; --resume reruns it.
        "max_failures": 0,
        "storage": str(jobs_storage),
    }
    settings_d = asdict(settings)
    configs = [
        {
            "key": t.key,
            "setting": t.setting,
            "jobs": [j.to_dict() for j in t.jobs],
            "run_names": {
                j.id: run_name(jobs_storage, j, settings.run_id, opts.resume) for j in t.jobs
            },
            "settings": settings_d,
            "exec": ex,
            "pg_dir": str(storage / "placement_groups" / t.key),
        }
        for t in trials
    ]
    if sweep.scheduler == "asha":
        # stop_last_trials=False: at max_t ASHA would otherwise stop a trial before its final
        # report (test metrics); our epochs end there anyway.
        scheduler = AsyncHyperBandScheduler(
            time_attr="epoch",
            metric="objective",
            mode="max",
            grace_period=sweep.grace_period,
            max_t=max(sweep.epochs, sweep.grace_period + 1),
            reduction_factor=sweep.reduction_factor,
            stop_last_trials=False,
        )
    else:
        scheduler = FIFOScheduler()
    if on_event is not None:
        _SINKS[settings.run_id] = on_event
    tuner = tune.Tuner(
        tune.with_resources(_sweep_trial, TRIAL_RESOURCES),
        param_space={"cfg": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler, max_concurrent_trials=_concurrency(sweep, opts)
        ),
        run_config=tune.RunConfig(
            name=f"{settings.run_id}-{int(time.time())}",
            storage_path=str(storage),
            callbacks=[_Recorder(settings.results, sweep.name, settings.run_id)],
            # A failing trial is recorded and the sweep goes on.
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=0,
        ),
    )
    before = _job_placement_groups()
    try:
        tuner.fit()
    finally:
        _SINKS.pop(settings.run_id, None)
        # Every trial has ended: a placement group this driver's job made during the sweep and
        # still alive is a leak (a Train run killed between creating its group and announcing it).
        leaked = _job_placement_groups() - before
        for pg_id in leaked:
            from ray._raylet import PlacementGroupID
            from ray.util.placement_group import PlacementGroup, remove_placement_group

            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
        if leaked:
            log.info("removed %d leaked placement groups", len(leaked))


def _job_placement_groups() -> set[str]:
    """Ids of the live placement groups of this driver's Ray job (a group id ends with its job
    id), so that other jobs sharing the cluster are never touched."""
    import ray
    from ray.util.placement_group import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return {
        k for k, v in placement_group_table().items() if v["state"] != "REMOVED" and k.endswith(job)
    }


# ---- outputs: summary table, plot, best configuration --------------------------------------

SUMMARY_METRICS = ("test_base", "test_novel", "test_hm", "test_accuracy")


def summary_rows(records: list[dict[str, Any]], params: Sequence[str]) -> list[dict[str, Any]]:
    """One row per trial, best objective first."""
    by_trial: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["trial"] in by_trial:
            continue
        row = {"trial": r["trial"], **{p: r.get(p) for p in params}}
        row.update(
            status=r["status"], epochs=f"{r['epochs_done']}/{r['epochs']}", objective=r["objective"]
        )
        row.update({k: r.get(k) for k in SUMMARY_METRICS if r.get(k) is not None})
        row["error"] = r.get("error")
        by_trial[r["trial"]] = row
    return sorted(
        by_trial.values(),
        key=lambda r: (
            r["status"] != "done",
            -(r["objective"] if r["objective"] is not None else -1),
        ),
    )


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed trial with the highest validation objective (stopped ones never win)."""
    done = [r for r in rows if r["status"] == "done" and r["objective"] is not None]
    return max(done, key=lambda r: r["objective"]) if done else None


def summary_markdown(result: SweepResult) -> str:
    from dplbench.report import fmt, md_table

    rows = result.trials()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    body = [
        [fmt(r.get(c)) if isinstance(r.get(c), float) else str(r.get(c) or "") for c in cols]
        for r in rows
    ]
    best = result.best()
    lines = [
        f"# Sweep `{result.sweep.name}` (suite {result.sweep.suite}, {result.sweep.scheduler})",
        "Objective: HM over datasets of the seed-mean validation accuracy (base classes only in "
        "base-to-novel); test metrics are recorded, never used for selection.",
        md_table(cols, body) if rows else "No trials recorded.",
    ]
    if best:
        setting = {p: best[p] for p in result.sweep.params if best.get(p) is not None}
        lines.append("Best configuration: `" + " ".join(best_overrides(setting)) + "`")
    return "\n\n".join(lines) + "\n"


def plot_objective(result: SweepResult, path: Path) -> Path:
    """Objective (and test HM when there) against each parameter; one panel per parameter."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in result.trials() if r["objective"] is not None]
    params = result.sweep.params
    fig = Figure(figsize=(4.5 * len(params), 3.6))
    FigureCanvasAgg(fig)
    for i, p in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        numeric = all(isinstance(r.get(p), int | float) for r in rows)
        labels = sorted({str(r.get(p)) for r in rows})
        for status, marker in (("done", "o"), ("stopped", "x"), ("failed", "s")):
            sel = [r for r in rows if r["status"] == status]
            xs = [r[p] if numeric else labels.index(str(r.get(p))) for r in sel]
            ax.scatter(xs, [r["objective"] for r in sel], marker=marker, label=status)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        elif (
            rows
            and min(r[p] for r in rows) > 0
            and max(r[p] for r in rows) / min(r[p] for r in rows) > 50
        ):
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel("objective (val, %)")
        ax.legend(fontsize=7)
    fig.suptitle(f"sweep {result.sweep.name}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)
    return path


def write_outputs(result: SweepResult, out: Path) -> dict[str, Path]:
    files = {"trials": out / "trials"}
    md = out / "summary.md"
    tmp = md.with_name(".summary.md.tmp")
    tmp.write_text(summary_markdown(result))
    tmp.replace(md)
    files["summary"] = md
    if result.records:
        files["plot"] = plot_objective(result, out / "objective.png")
    best = result.best()
    if best:
        setting = {p: best[p] for p in result.sweep.params if best.get(p) is not None}
        (out / "best.txt").write_text(" ".join(best_overrides(setting)) + "\n")
        files["best"] = out / "best.txt"
    return files
