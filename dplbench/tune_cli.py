"""`dplbench tune` and `dplbench ablate`: thin commands over dplbench.sweeps and dplbench.ablations.

`register(app)` adds them to the main app; the cli module is imported inside the commands (it
imports this module to register, so a top-level import would be a cycle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from dplbench.cli_options import (
    DATA_DEFAULT,
    RESULTS_DEFAULT,
    Address,
    Cpus,
    Data,
    Datasets,
    DryRun,
    Gpus,
    LoaderWorkers,
    Results,
    Seeds,
    UseRay,
    Workers,
)

Opt = typer.Option


class TrialTable:
    """Live table of a sweep: one line per trial, updated from the Tune callback."""

    def __init__(self, sweep) -> None:
        self.sweep = sweep
        self.state = {t.key: ("queued", "", None) for t in sweep.trials}

    def event(self, key: str, state: str, info: dict) -> None:
        _, epoch, obj = self.state.get(key, ("", "", None))
        if info.get("epoch"):
            epoch = f"{int(info['epoch'])}/{self.sweep.epochs}"
        if info.get("objective") is not None:
            obj = info["objective"]
        if state == "failed" and info.get("error"):
            epoch = str(info["error"])[:60]
        self.state[key] = (state, epoch, obj)

    def render(self) -> Table:
        counts = {}
        for s, _, _ in self.state.values():
            counts[s] = counts.get(s, 0) + 1
        t = Table(title=" · ".join(f"{k} {v}" for k, v in counts.items()), title_justify="left")
        for col in ("trial", *self.sweep.params, "jobs", "state", "epoch", "objective"):
            t.add_column(col)
        style = {"done": "green", "failed": "red", "running": "yellow", "stopped": "cyan"}
        for trial in self.sweep.trials:
            state, epoch, obj = self.state[trial.key]
            t.add_row(
                trial.key,
                *(str(trial.setting.get(p, "")) for p in self.sweep.params),
                str(len(trial.jobs)),
                f"[{style.get(state, 'dim')}]{state}[/]",
                epoch,
                "" if obj is None else f"{obj:.2f}",
            )
        return t


def _abs(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def register(app: typer.Typer) -> None:
    """Add `tune` and `ablate` to the main app."""
    from dplbench.cli import user_errors

    @app.command()
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
        resume: Annotated[bool, Opt(help="keep trials already done/stopped; rerun the rest")] = (
            False
        ),
        dry_run: Annotated[bool, Opt(help="list the trials and exit")] = False,
        data: Data = DATA_DEFAULT,
        results_root: Results = RESULTS_DEFAULT,
        loader_workers: LoaderWorkers = 2,
        override: Annotated[
            list[str], typer.Argument(help="config overrides for every trial, key=value")
        ] = None,
    ) -> None:
        """Sweep method parameters; select on validation data; Parquet + summary + plot + best.

        Example: dplbench tune --param entropy_weight --values 0.01,0.05,0.1 --suite smoke
        """
        from dplbench import sweeps
        from dplbench.cli import console, err, selections_from_cli
        from dplbench.config import ConfigError
        from dplbench.execution import ExecOptions
        from dplbench.train import RunSettings

        spec = sweeps.load_space(space) if space else {}
        if param:
            grid = sweeps.cli_space(param, values)
            if spec:
                raise ConfigError("give --param or --space, not both")
        elif spec:
            grid = spec["params"]
        else:
            raise ConfigError(
                f"say what to sweep: --param NAME or --space FILE; names: {', '.join(sweeps.PARAMS)}"
            )
        sched = scheduler or spec.get("scheduler", "asha")
        if sched not in ("fifo", "asha"):
            raise ConfigError(f"--scheduler {sched!r}: choose fifo or asha")
        settings_list = sweeps.expand(grid, num_samples or int(spec.get("num_samples", 1)))
        sel = selections_from_cli(
            method or spec.get("method", "dpl"), datasets, seeds, workers, override
        )
        if not sel["datasets"] and spec.get("datasets"):
            sel["datasets"] = list(spec["datasets"])
        if not sel["seeds"] and spec.get("seeds"):
            sel["seeds"] = [int(s) for s in spec["seeds"]]
        from dplbench.config import deep_merge

        sel["overrides"] = deep_merge(spec.get("overrides") or {}, sel["overrides"])
        sweep = sweeps.make_sweep(
            settings_list,
            suite or spec.get("suite", "smoke"),
            sel,
            name=name,
            scheduler=sched,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
        )
        table = TrialTable(sweep)
        if dry_run:
            console.print(table.render())
            jobs = sum(len(t.jobs) for t in sweep.trials)
            console.print(f"sweep {sweep.name}: {len(sweep.trials)} trials, {jobs} jobs; not run")
            return
        settings = RunSettings(
            data=_abs(data),
            results=_abs(results_root),
            suite=sweep.suite,
            loader_workers=loader_workers,
        )
        opts = ExecOptions(gpus=gpus, cpus=cpus, address=address, resume=resume)
        with Live(
            table.render(), console=console, auto_refresh=False, transient=not console.is_terminal
        ) as live:

            def on_event(key, state, info):
                table.event(key, state, info)
                live.update(table.render(), refresh=True)

            result = sweeps.run_sweep(sweep, settings, opts, on_event)
        _print_summary(result, console)
        for r in result.trials():
            if r["status"] == "failed":
                err.print(f"[red]failed[/red] trial {r['trial']}: {r.get('error')}")

    @app.command()
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
        override: Annotated[
            list[str], typer.Argument(help="config overrides for every variant, key=value")
        ] = None,
    ) -> None:
        """Run an ablation's variants (configs/ablations/*.yaml) and print its table.

        Without NAME: list the ablations.

        Example: dplbench ablate rer --suite smoke --seeds 1 optim.epochs=2
        """
        from dplbench import ablations
        from dplbench.cli import JobTable, console, err, selections_from_cli
        from dplbench.execution import ExecOptions
        from dplbench.train import RunSettings

        if name is None:
            for n in ablations.list_ablations():
                console.print(f"{n}: {ablations.load_ablation(n).description}", highlight=False)
            return
        ab = ablations.load_ablation(name)
        root = _abs(results_root)
        if not table_only:
            s = ablations.ablation_suite(
                ab, selections_from_cli(None, datasets, seeds, workers, override), suite
            )
            jobs = JobTable(s.jobs)
            if dry_run:
                console.print(jobs.render())
                console.print(f"{len(s.jobs)} jobs; nothing was run (--dry-run)")
                return
            settings = RunSettings(
                data=_abs(data), results=root, suite=s.name, loader_workers=loader_workers
            )
            opts = ExecOptions(gpus=gpus, cpus=cpus, address=address, resume=resume, use_ray=ray)
            with Live(
                jobs.render(),
                console=console,
                auto_refresh=False,
                transient=not console.is_terminal,
            ) as live:

                def on_event(job_id, state, info):
                    jobs.event(job_id, state, info)
                    live.update(jobs.render(), refresh=True)

                summary = ablations.run_ablation(ab, s, settings, opts, on_event)
            if summary.skipped:
                console.print(f"--resume: {len(summary.skipped)} jobs already had results")
            for o in summary.failed:
                err.print(f"[red]failed[/red] {o.job.id} {o.job.params.get('variant')}: {o.error}")
        suite_name = Path(suite or ab.suite).stem
        text = ablations.ablation_markdown(
            ab, ablations.ablation_table(ab, root, suite_name), suite_name
        )
        path = ablations.write_markdown(text, root, f"{ab.name}-{suite_name}")
        console.print(text, highlight=False)
        console.print(f"table: {path}")
        if not table_only and summary.failed:
            raise typer.Exit(1)


def _print_summary(result, console) -> None:
    from dplbench.sweeps import best_overrides

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
    best = result.best()
    if best is None:
        console.print("no trial completed: no best configuration")
        return
    setting = {p: best[p] for p in result.sweep.params if best.get(p) is not None}
    console.print(f"best (objective {best['objective']:.2f}):", highlight=False)
    console.print(" ".join(best_overrides(setting)), highlight=False, soft_wrap=True)
