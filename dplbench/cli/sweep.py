"""`dplbench tune` and `dplbench ablate`: sweeps and ablations over the runner's jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dplbench.cli.common import (
    DATA_DEFAULT,
    RESULTS_DEFAULT,
    Address,
    Compile,
    Cpus,
    Data,
    Datasets,
    DryRun,
    Gpus,
    JobsPerGpu,
    JobTable,
    LoaderWorkers,
    OnDataError,
    OnLease,
    Results,
    Seeds,
    Track,
    TrackUri,
    TrialTable,
    UseRay,
    Workers,
    abs_path,
    check_llm_caches,
    check_on_data_error,
    console,
    err,
    live,
    selections,
    user_errors,
)
from dplbench.cli.common import (
    jobs_per_gpu as resolve_jobs_per_gpu,
)
from dplbench.errors import ConfigError

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command()(tune)
    app.command()(ablate)


@user_errors
def tune(
    param: Annotated[
        list[str],
        Opt(help="parameter to sweep: NAME (its default grid), NAME=v1,v2 (repeatable)"),
    ] = None,
    values: Annotated[str, Opt(help="comma list of values for the one --param")] = None,
    space: Annotated[str, Opt(help="search space: configs/sweeps/<name> or a YAML")] = None,
    suite: Annotated[str, Opt(help="suite (default: the space's, else smoke)")] = None,
    method: Annotated[str, Opt(help="method (default: the space's, else dpl)")] = None,
    datasets: Datasets = None,
    seeds: Seeds = None,
    num_samples: Annotated[int, Opt(help="random draws per grid point (spaces)")] = None,
    scheduler: Annotated[str, Opt(help="fifo | asha (default: the space's, else asha)")] = None,
    grace_period: Annotated[int, Opt(help="ASHA: epochs before the first stop")] = 1,
    reduction_factor: Annotated[int, Opt(help="ASHA: keep the best 1/rf at a rung")] = 2,
    gpus: Gpus = 0,
    cpus: Cpus = None,
    workers: Workers = None,
    address: Address = None,
    name: Annotated[str, Opt(help="sweep name (default: params + hash of the sweep)")] = None,
    resume: Annotated[bool, Opt(help="keep trials already done/stopped; rerun the rest")] = False,
    dry_run: Annotated[bool, Opt(help="list the trials and exit")] = False,
    data: Data = DATA_DEFAULT,
    results_root: Results = RESULTS_DEFAULT,
    loader_workers: LoaderWorkers = 2,
    on_data_error: OnDataError = "raise",
    jobs_per_gpu: JobsPerGpu = "1",
    compile_step: Compile = None,
    track: Track = None,
    track_uri: TrackUri = None,
    override: Annotated[
        list[str], typer.Argument(help="config overrides for every trial, key=value")
    ] = None,
) -> None:
    """Sweep method parameters; select on validation data; Parquet + summary + plot + best.

    Example: dplbench tune --param entropy_weight --values 0.01,0.05,0.1 --suite smoke
    """
    from dplbench.plan import sweeps
    from dplbench.plan.config import deep_merge
    from dplbench.run.settings import ExecOptions, RunSettings
    from dplbench.run.sweep import run_sweep

    spec = sweeps.load_space(space) if space else None
    if param and spec:
        raise ConfigError("give --param or --space, not both")
    if param:
        grid = sweeps.cli_space(param, values)
    elif spec:
        grid = spec.params
    else:
        raise ConfigError(
            f"say what to sweep: --param NAME or --space FILE; names: {', '.join(sweeps.PARAMS)}"
        )
    spec = spec or sweeps.SweepSpace(params=grid)
    sched = scheduler or spec.scheduler or "asha"
    if sched not in ("fifo", "asha"):
        raise ConfigError(f"--scheduler {sched!r}: choose fifo or asha")
    settings_list = sweeps.expand(grid, num_samples or spec.num_samples)
    sel = selections(method or spec.method or "dpl", datasets, seeds, workers, override)
    sel["datasets"] = sel["datasets"] or list(spec.datasets) or None
    sel["seeds"] = sel["seeds"] or list(spec.seeds) or None
    sel["overrides"] = deep_merge(spec.overrides, sel["overrides"])
    sweep = sweeps.make_sweep(
        settings_list,
        suite or spec.suite or "smoke",
        sel,
        name=name,
        scheduler=sched,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )
    table = TrialTable(sweep)
    check_llm_caches([j for t in sweep.trials for j in t.jobs], dry_run)
    if dry_run:
        console.print(table.render())
        jobs = sum(len(t.jobs) for t in sweep.trials)
        console.print(f"sweep {sweep.name}: {len(sweep.trials)} trials, {jobs} jobs; not run")
        return
    settings = RunSettings(
        data=abs_path(data),
        results=abs_path(results_root),
        suite=sweep.suite,
        loader_workers=loader_workers,
        on_data_error=check_on_data_error(on_data_error),
        compile=compile_step or None,
    )
    jobs = [j for t in sweep.trials for j in t.jobs]
    per_gpu = resolve_jobs_per_gpu(jobs_per_gpu, jobs, gpus, cpus, results_root)
    opts = ExecOptions(gpus=gpus, cpus=cpus, address=address, resume=resume, jobs_per_gpu=per_gpu)
    from dplbench.run.tracking import Tracker

    tracker = Tracker(track, settings.results, sweep.name, track_uri) if track else None
    with live(table, tracker) as on_event:
        result = run_sweep(sweep, settings, opts, on_event)
    _print_sweep(result)
    for r in result.trials():
        if r["status"] == "failed":
            err.print(f"[red]failed[/red] trial {r['trial']}: {r.get('error')}")


def _print_sweep(result) -> None:
    from dplbench.plan.sweeps import best_overrides

    rows = result.trials()
    t = Table(title=f"sweep {result.sweep.name}: best validation objective first")
    cols = list(dict.fromkeys(k for r in rows for k in r if k != "error"))
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(
            *(
                f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))
                for v in (r.get(c) for c in cols)
            )
        )
    console.print(t)
    if result.skipped:
        console.print(f"--resume: kept {len(result.skipped)} trials from earlier runs")
    for label, path in result.files.items():
        console.print(f"{label}: {path}")
    best, setting = result.best(), result.best_setting()
    if best is None:
        console.print("no trial completed: no best configuration")
        return
    console.print(f"best (objective {best['objective']:.2f}):", highlight=False)
    console.print(" ".join(best_overrides(setting)), highlight=False, soft_wrap=True)


@user_errors
def ablate(
    name: Annotated[
        str, typer.Argument(help="ablation: configs/ablations/<name> or a YAML path")
    ] = None,
    suite: Annotated[str, Opt(help="suite (default: the ablation's)")] = None,
    datasets: Datasets = None,
    seeds: Seeds = None,
    gpus: Gpus = 0,
    cpus: Cpus = None,
    workers: Workers = None,
    address: Address = None,
    resume: Annotated[bool, Opt(help="run only variants' jobs without rows")] = False,
    dry_run: DryRun = False,
    table_only: Annotated[bool, Opt("--table", help="print the table; run nothing")] = False,
    ray: UseRay = True,
    data: Data = DATA_DEFAULT,
    results_root: Results = RESULTS_DEFAULT,
    loader_workers: LoaderWorkers = 2,
    on_data_error: OnDataError = "raise",
    on_lease: OnLease = "skip",
    jobs_per_gpu: JobsPerGpu = "1",
    compile_step: Compile = None,
    track: Track = None,
    track_uri: TrackUri = None,
    override: Annotated[
        list[str], typer.Argument(help="config overrides for every variant, key=value")
    ] = None,
) -> None:
    """Run an ablation's variants (configs/ablations/*.yaml) and print its table.

    Without NAME: list the ablations.

    Example: dplbench ablate rer --suite smoke --seeds 1 optim.epochs=2
    """
    from dplbench.cli.run import print_failures, run_live
    from dplbench.plan import ablations
    from dplbench.results import ablations as tables

    if name is None:
        for n in ablations.list_ablations():
            console.print(f"{n}: {ablations.load_ablation(n).description}", highlight=False)
        return
    ab = ablations.load_ablation(name)
    root = abs_path(results_root)
    summary = None
    if not table_only:
        s = ablations.ablation_suite(
            ab, selections(None, datasets, seeds, workers, override), suite
        )
        jobs = JobTable(s.jobs)
        check_llm_caches(s.jobs, dry_run)
        if dry_run:
            console.print(jobs.render())
            console.print(f"{len(s.jobs)} jobs; nothing was run (--dry-run)")
            return
        summary = run_live(
            s, data, root, loader_workers, on_data_error, gpus, cpus, address, resume, ray,
            on_lease, jobs_per_gpu, compile_step, track, track_uri,
        )  # fmt: skip
        print_failures(summary)
    suite_name = Path(suite or ab.suite).stem
    text = tables.ablation_markdown(ab, tables.ablation_table(ab, root, suite_name), suite_name)
    path = tables.write_markdown(text, root, f"{ab.name}-{suite_name}")
    console.print(text, highlight=False)
    console.print(f"table: {path}")
    if summary is not None and summary.failed:
        raise typer.Exit(1)
