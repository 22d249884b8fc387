"""Options shared by `run`, `tune` and `ablate`: declared once, so they read the same everywhere."""

from __future__ import annotations

import os
from typing import Annotated

import typer

Opt = typer.Option
DATA_DEFAULT = os.environ.get("DPLBENCH_DATA", "shards")
RESULTS_DEFAULT = os.environ.get("DPLBENCH_RESULTS", "results")

Datasets = Annotated[str, Opt(help="comma list: restrict the suite's datasets")]
Seeds = Annotated[str, Opt(help="comma list of seeds")]
Gpus = Annotated[int, Opt(help="GPUs to use in all (one per worker)")]
Cpus = Annotated[int, Opt(help="CPUs to use in all (default: all)")]
Workers = Annotated[int, Opt(help="DDP workers per job")]
Address = Annotated[str, Opt(help="join a running Ray cluster (e.g. auto)")]
Data = Annotated[str, Opt(help="shards root ($DPLBENCH_DATA)")]
Results = Annotated[str, Opt("--results", help="results root ($DPLBENCH_RESULTS)")]
DryRun = Annotated[bool, Opt(help="list the jobs and exit")]
UseRay = Annotated[bool, Opt("--ray/--no-ray", help="--no-ray: jobs in this process")]
LoaderWorkers = Annotated[int, Opt(help="data loader processes per worker")]
Overrides = Annotated[list[str], typer.Argument(help="method config overrides key=value")]
