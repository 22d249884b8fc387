"""`dplbench bench`: benchmarks, as ratios measured side by side in one run."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.table import Table

from dplbench.cli.common import console, csv_list, results_root, user_errors

Opt = typer.Option

app = typer.Typer(
    help="Benchmarks (timings as ratios measured side by side).", no_args_is_help=True
)


@app.command("model")
@user_errors
def bench_model(
    models: Annotated[str, Opt(help="open_clip architectures (random init)")] = "dpl-tiny,ViT-B-16",
    methods: Annotated[str | None, Opt(help="comma list; default: every registered method")] = None,
    batch: Annotated[int, Opt(help="training batch")] = 4,
    eval_batch: Annotated[int, Opt(help="evaluation batch")] = 4,
    classes: Annotated[int, Opt(help="classes in the prompt list")] = 50,
    steps: Annotated[int, Opt(help="timed steps (after warm-up)")] = 3,
    warmup: Annotated[int, Opt(help="untimed steps first")] = 2,
    device: Annotated[str | None, Opt(help="cuda / cpu (default: cuda if available)")] = None,
    bf16: Annotated[
        bool | None, Opt("--bf16/--fp32", help="autocast (default: bf16 on GPU)")
    ] = None,
    results: Annotated[
        str | None,
        Opt(
            "--results", help="add each method's HM from these results; save the calibration there"
        ),
    ] = None,
) -> None:
    """Trainable parameters, train-step time, eval throughput and peak memory of every method,
    with ratios to ivlp and zsclip. Saved as this machine's calibration (--jobs-per-gpu auto,
    run --dry-run estimates).

    Example: dplbench bench model --models dpl-tiny --steps 10
    """
    from dplbench.bench.model import BenchRequest, measure

    logging.getLogger().setLevel(logging.ERROR)
    request = BenchRequest(
        tuple(csv_list(models) or ()), tuple(csv_list(methods) or ()), batch, eval_batch,
        classes, steps, warmup, device, bf16,
    )  # fmt: skip
    result = measure(request, results_root(results) if results else None)
    print_bench(result)


def print_bench(result) -> None:
    r0 = result.request
    table = Table(title=f"train batch {r0.batch}, eval batch {r0.eval_batch}, {r0.classes} classes")
    cols = ["model", "method", "params", "train ms", "× ivlp", "eval img/s", "× zsclip", "peak MiB"]
    for col in [*cols, *(["HM"] if result.hm else [])]:
        table.add_column(col, justify="right" if col not in ("model", "method") else "left")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in result.rows:
        table.add_row(
            r["model"],
            r["method"],
            f"{r['params']:,}",
            fmt(r["train_ms"], ".1f"),
            fmt(r["train_vs_ivlp"], ".3f"),
            fmt(r["eval_img_s"], ".1f"),
            fmt(r["eval_vs_zsclip"], ".3f"),
            fmt(r["peak_mib"], ".0f"),
            *([fmt(result.hm.get(r["method"]), ".2f")] if result.hm else []),
        )
    console.print(table, width=max(console.width, 100))
    for path in result.calibrations:
        console.print(f"calibration: {path}", highlight=False)
