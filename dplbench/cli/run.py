"""`dplbench run` and `dplbench demo`."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

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
    LlmCacheDir,
    LoaderWorkers,
    OnDataError,
    OnLease,
    Overrides,
    Results,
    Seeds,
    Track,
    TrackUri,
    UseRay,
    Workers,
    abs_path,
    check_choice,
    check_llm_caches,
    check_on_data_error,
    console,
    err,
    live,
    print_resume,
    print_rows,
    selections,
    user_errors,
)
from dplbench.cli.common import (
    jobs_per_gpu as resolve_jobs_per_gpu,
)
from dplbench.errors import ConfigError

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(demo)


@user_errors
def run(
    suite: Annotated[str, Opt(help="suite name (configs/suites) or a YAML path")] = "smoke",
    methods: Annotated[str, Opt(help="comma list: restrict/replace the suite's methods")] = None,
    datasets: Datasets = None,
    seeds: Seeds = None,
    gpus: Gpus = 0,
    cpus: Cpus = None,
    workers: Workers = None,
    address: Address = None,
    data: Data = DATA_DEFAULT,
    results_root: Results = RESULTS_DEFAULT,
    resume: Annotated[bool, Opt(help="run only jobs whose result rows are missing")] = False,
    dry_run: DryRun = False,
    fmt: Annotated[
        str, Opt("--format", help="--dry-run output: table | json (one object per job)")
    ] = "table",
    ray: UseRay = True,
    loader_workers: LoaderWorkers = 2,
    on_data_error: OnDataError = "raise",
    on_lease: OnLease = "skip",
    jobs_per_gpu: JobsPerGpu = "1",
    compile_step: Compile = None,
    track: Track = None,
    track_uri: TrackUri = None,
    llm_cache: LlmCacheDir = None,
    override: Overrides = None,
) -> None:
    """Run a suite: every job a Ray Train run, many at once, results into Parquet.

    Example: dplbench run --suite base2novel --methods dpl,promptsrc --gpus 32 iwtd.p_max=0.4
    """
    from dplbench.plan.suites import load_suite

    if fmt not in ("table", "json"):
        raise ConfigError(f"--format {fmt!r}: choose table or json")
    s = load_suite(suite, selections(methods, datasets, seeds, workers, override, llm_cache))
    table = JobTable(s.jobs)
    check_llm_caches(s.jobs, dry_run)
    if dry_run:
        if fmt == "json":  # the recipe view: what each job will train with
            for j in s.jobs:
                sys.stdout.write(json.dumps(recipe_view(j), sort_keys=True) + "\n")
            return
        console.print(table.render())
        console.print(f"{len(s.jobs)} jobs; nothing was run (--dry-run)")
        per_gpu = resolve_jobs_per_gpu(jobs_per_gpu, s.jobs, gpus, cpus, results_root)
        print_estimate(s.jobs, gpus, per_gpu, cpus, results_root)
        return
    summary = run_live(
        s, data, results_root, loader_workers, on_data_error, gpus, cpus, address, resume, ray,
        on_lease, jobs_per_gpu, compile_step, track, track_uri,
    )  # fmt: skip
    _print_summary(abs_path(results_root), [o.job.id for o in summary.outcomes])
    print_failures(summary)
    if summary.failed:
        raise typer.Exit(1)


def print_estimate(jobs, gpus: int, per_gpu: int, cpus: int | None, results_root: str) -> None:
    """GPU-hours and wall time of the suite from this machine's bench calibration."""
    from dplbench.bench import calibration

    calib = calibration.load_for(gpus, abs_path(results_root))
    if calib is None:
        console.print("no calibration: run `dplbench bench model` for estimates", highlight=False)
        return
    slots = gpus * per_gpu if gpus else (cpus or os.cpu_count() or 1)
    est = calibration.estimate(list(jobs), calib, slots)
    hours = "GPU-hours" if gpus else "CPU-job-hours"
    bound = " (at least: packed jobs are taken not to slow each other)" if per_gpu > 1 else ""
    console.print(
        f"estimate from {calib.device}: {est.gpu_hours:.2f} {hours}, {est.wall_hours:.2f} h wall "
        f"on {slots} job places{bound}; {est.covered} of {est.jobs} jobs calibrated",
        highlight=False,
    )


def run_live(
    s, data, results_root, loader_workers, on_data_error, gpus, cpus, address, resume, ray,
    on_lease, jobs_per_gpu="1", compile_step=None, track=None, track_uri=None,
):  # fmt: skip
    """A suite's jobs with the live table, from the options `run` and `ablate` share."""
    from dplbench.run.settings import ExecOptions, RunSettings
    from dplbench.run.suite import run_suite
    from dplbench.run.tracking import Tracker

    settings = RunSettings(
        data=abs_path(data),
        results=abs_path(results_root),
        suite=s.name,
        loader_workers=loader_workers,
        on_data_error=check_on_data_error(on_data_error),
        fail_job=os.environ.get("DPLBENCH_FAIL_JOB"),  # testing hook: make one job fail
        compile=compile_step or None,
    )
    per_gpu = resolve_jobs_per_gpu(jobs_per_gpu, s.jobs, gpus, cpus, results_root)
    opts = ExecOptions(
        gpus=gpus,
        cpus=cpus,
        address=address,
        resume=resume,
        use_ray=ray,
        on_lease=check_choice("--on-lease", on_lease, ("skip", "wait")),
        jobs_per_gpu=per_gpu,
    )
    packing = f"{per_gpu} jobs per GPU" if gpus else ""
    tracker = Tracker(track, settings.results, s.name, track_uri) if track else None
    with live(JobTable(s.jobs, packing), tracker) as on_event:
        summary = run_suite(s, settings, opts, on_event)
    print_resume(summary)
    return summary


def print_failures(summary) -> None:
    for o in summary.failed:
        label = o.job.params.get("variant") or f"{o.job.method} {o.job.train.dataset}"
        err.print(
            f"[red]failed[/red] {o.job.id} {label}: {o.error}", highlight=False, soft_wrap=True
        )
    if summary.status_file:
        console.print(f"job status: {summary.status_file}", highlight=False)


def recipe_view(job) -> dict:
    """One job as the recipe view shows it: what it trains on and its full resolved config."""
    from dpl.methods.config import to_dict

    return {
        "job_id": job.id,
        "method": job.method,
        "protocol": job.protocol,
        "dataset": job.train.dataset,
        "subsample": job.train.subsample,
        "shots": job.train.shots,
        "imbalance": job.train.imbalance,
        "seed": job.seed,
        "evaluates": [f"{e.dataset}/{e.subsample}" for e in job.evals],
        "source_job_id": job.source,
        "trains": job.trains,
        "config": to_dict(job.config),
    }


def _print_summary(results_root: str, job_ids: list[str]) -> None:
    from dplbench.results import store

    if not job_ids or not store.has_rows(results_root):
        return
    rows = store.query(
        results_root,
        "SELECT method, dataset, subsample, count(*) AS seeds, round(avg(accuracy), 2) AS accuracy "
        "FROM results WHERE list_contains($ids, job_id) GROUP BY ALL "
        "ORDER BY dataset, method, subsample",
        {"ids": job_ids},
    ).to_pylist()
    print_rows(rows, "summary (mean over seeds)")


@user_errors
def demo(data: Data = DATA_DEFAULT, results_root: Results = RESULTS_DEFAULT) -> None:
    """The smoke suite on local Ray (synthetic data, tiny CLIP, CPU), then its report.

    Example: dplbench demo
    """
    from dplbench.cli.report import report

    # Annotated options keep their defaults as plain values: name only what differs.
    run(suite="smoke", data=data, results_root=results_root, loader_workers=1)
    report(suite="smoke", compare=True, results_root=results_root, out=None)
