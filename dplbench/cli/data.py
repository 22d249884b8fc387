"""`dplbench data ...`: convert, fewshot, synth, verify, ls. Each command calls one function."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dplbench.cli.common import int_list, user_errors
from dplbench.data.errors import DataError

app = typer.Typer(
    help="Convert, subsample, synthesise and verify benchmark data.", no_args_is_help=True
)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _data_errors(fn):
    """Progress at INFO level; bad input as one line and exit 2 (cli/common.py)."""

    checked = user_errors(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging()
        return checked(*args, **kwargs)

    return wrapper


def _ints(text: str) -> list[int]:
    return int_list(text) or []


Opt = typer.Option
Arg = typer.Argument
_WORKERS = os.cpu_count() or 1


@app.command()
@_data_errors
def convert(
    root: Annotated[Path, Opt("--root", help="$DATA in the CoOp layout.")],
    out: Annotated[Path, Opt("--out", help="Output shards root.")],
    datasets: Annotated[str, Opt(help="`all` (the 15) or k1,k2,...")] = "all",
    skip_missing: Annotated[
        bool, Opt(help="Skip missing/undecodable images and record the count.")
    ] = False,
    max_side: Annotated[
        int, Opt(help="Re-encode images whose shorter side exceeds N (0: keep the bytes).")
    ] = 0,
    samples_per_shard: Annotated[int, Opt()] = 1000,
    workers: Annotated[int, Opt(help="Local processes.")] = _WORKERS,
    ray_address: Annotated[
        str | None, Opt(help="Write shards as Ray tasks on this cluster (shared --out).")
    ] = None,
    progress: Annotated[bool, Opt("--progress/--no-progress")] = True,
) -> None:
    """Convert datasets into WebDataset shards (CLIP_benchmark layout + dplbench.json).

    Example: dplbench data convert --root ~/data --datasets oxford_pets,dtd --out ~/shards
    """
    from dplbench.data.convert import ConvertOptions
    from dplbench.data.convert import convert as run
    from dplbench.data.datasets import resolve_datasets

    opts = ConvertOptions(samples_per_shard, max_side or None, skip_missing)
    reports = run(root, resolve_datasets(datasets), out, opts, workers, ray_address, progress)
    for r in reports:
        skipped = f", {r.skipped} skipped" if r.skipped else ""
        typer.echo(f"{r.dataset}: {r.status} {r.counts}{skipped}")


@app.command()
@_data_errors
def fewshot(
    shards: Annotated[Path, Opt("--shards", help="Shards root written by `convert`.")],
    datasets: Annotated[str, Opt(help="`all` or k1,k2,...")] = "all",
    shots: Annotated[str, Opt(help="Comma-separated shot counts.")] = "1,2,4,8,16",
    seeds: Annotated[str, Opt(help="Comma-separated seeds.")] = "1,2,3",
    subsample: Annotated[
        str, Opt(help="all|base|novel: classes written (the draw is over all classes).")
    ] = "all",
    imbalance: Annotated[
        float | None, Opt(help="Long-tail ratio r over the base classes (instead of shots).")
    ] = None,
    samples_per_shard: Annotated[int, Opt()] = 1000,
    workers: Annotated[int, Opt(help="Local processes.")] = _WORKERS,
    progress: Annotated[bool, Opt("--progress/--no-progress")] = True,
) -> None:
    """Write few-shot (CoOp-exact) or long-tail training sets as small shard sets.

    Example: dplbench data fewshot --shards ~/shards --datasets all --shots 16 --seeds 1,2,3
    """
    from dplbench.data.datasets import resolve_datasets
    from dplbench.data.fewshot import make_fewshot
    from dplbench.data.protocols import SUBSAMPLES

    if subsample not in SUBSAMPLES:
        raise DataError(f"--subsample must be one of {SUBSAMPLES}, got {subsample!r}")
    keys = resolve_datasets(datasets)
    out = make_fewshot(
        shards,
        keys,
        _ints(shots),
        _ints(seeds),
        subsample,
        imbalance,
        samples_per_shard,
        workers,
        progress,
    )
    for key, sels in out.items():
        for s in sels:
            sizes = ", ".join(f"{sp} {len(k)}" for sp, k in s.keys.items())
            typer.echo(f"{key}/{s.name}: {sizes}")


@app.command()
@_data_errors
def synth(
    out: Annotated[Path, Opt("--out", help="$DATA to write `synthetic/` into.")],
    classes: Annotated[int, Opt()] = 10,
    per_class: Annotated[int, Opt(help="Images per class (60/20/20 split).")] = 30,
    size: Annotated[int, Opt(help="Image side in pixels.")] = 64,
    seed: Annotated[int, Opt()] = 0,
) -> None:
    """Write a small synthetic benchmark (dataset key `synthetic`) in the CoOp layout.

    Example: dplbench data synth --out ~/data --classes 10 --per-class 30
    """
    from dplbench.data.synth import make_synthetic

    typer.echo(str(make_synthetic(out, classes, per_class, size, seed)))


@app.command()
@_data_errors
def verify(
    shards: Annotated[Path, Arg(help="Shards root.")],
    datasets: Annotated[str | None, Opt(help="k1,k2,... (default: all found).")] = None,
) -> None:
    """Check shards against their metadata; exit 1 if anything is wrong.

    Example: dplbench data verify ~/shards --datasets oxford_pets
    """
    from dplbench.data.datasets import resolve_datasets
    from dplbench.data.meta import converted_datasets
    from dplbench.data.verify import verify as run

    keys = resolve_datasets(datasets) if datasets else converted_datasets(shards)
    if not keys:
        raise DataError(f"no converted dataset under {shards}")
    bad = 0
    for key, problems in run(shards, keys).items():
        typer.echo(f"{key}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            typer.echo(f"  {p}", err=True)
        bad += bool(problems)
    if bad:
        raise typer.Exit(1)


@app.command("ls")
@_data_errors
def ls(shards: Annotated[Path, Arg(help="Shards root.")]) -> None:
    """List converted datasets, their classes, samples per split and few-shot sets.

    Example: dplbench data ls ~/shards
    """
    from dplbench.data.meta import FEWSHOT_DIR, converted_datasets, load_meta

    table = Table("dataset", "classes", "train", "val", "test", "shards", "few-shot sets")
    for key in converted_datasets(shards):
        meta = load_meta(shards, key)

        def count(split, meta=meta):
            real = meta.aliases.get(split, split)
            m = meta.splits.get(real)
            return "-" if m is None else (f"={real}" if real != split else str(m.count))

        fs = sorted(p.name for p in (shards / key / FEWSHOT_DIR).glob("[!.]*"))
        n_shards = sum(len(m.shards) for m in meta.splits.values())
        table.add_row(
            key,
            str(len(meta.classnames)),
            count("train"),
            count("val"),
            count("test"),
            str(n_shards),
            " ".join(fs) or "-",
        )
    Console(file=sys.stdout).print(table)
