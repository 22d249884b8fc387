"""`dplbench bench`: benchmarks, as ratios measured side by side in one run."""

from __future__ import annotations

import logging

import typer
from rich.table import Table

from dplbench.cli.common import console, csv_list

app = typer.Typer(
    help="Benchmarks (timings as ratios measured side by side).", no_args_is_help=True
)


@app.command("model")
def bench_model(
    models: str = typer.Option("dpl-tiny,ViT-B-16", help="open_clip architectures (random init)"),
    methods: str = typer.Option(None, help="comma list; default: every registered method"),
    batch: int = typer.Option(4, help="training batch"),
    eval_batch: int = typer.Option(4, help="evaluation batch"),
    classes: int = typer.Option(50, help="classes in the prompt list"),
    steps: int = typer.Option(3, help="timed steps (after warm-up)"),
    warmup: int = typer.Option(2),
    device: str = typer.Option(None, help="cuda / cpu (default: cuda if available)"),
    bf16: bool = typer.Option(None, "--bf16/--fp32", help="autocast (default: bf16 on GPU)"),
    results_root: str = typer.Option(
        None,
        "--results",
        help="add each method's HM from these results; save the calibration there",
    ),
) -> None:
    """Trainable parameters, train-step time, eval throughput and peak memory of every method,
    with ratios to ivlp and zsclip. Saved as this machine's calibration (--jobs-per-gpu auto,
    run --dry-run estimates).

    Example: dplbench bench model --models dpl-tiny --steps 10
    """
    import torch

    from dplbench.bench import calibration
    from dplbench.bench.model import bench_models, method_hm, ratio_table

    logging.getLogger().setLevel(logging.ERROR)
    rows = ratio_table(
        bench_models(
            csv_list(models),
            csv_list(methods),
            batch,
            eval_batch,
            classes,
            steps,
            warmup,
            device,
            bf16,
        )
    )
    hm = method_hm(results_root) if results_root else {}
    table = Table(title=f"train batch {batch}, eval batch {eval_batch}, {classes} classes")
    cols = ["model", "method", "params", "train ms", "× ivlp", "eval img/s", "× zsclip", "peak MiB"]
    for col in [*cols, *(["HM"] if hm else [])]:
        table.add_column(col, justify="right" if col not in ("model", "method") else "left")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in rows:
        table.add_row(
            r["model"],
            r["method"],
            f"{r['params']:,}",
            fmt(r["train_ms"], ".1f"),
            fmt(r["train_vs_ivlp"], ".3f"),
            fmt(r["eval_img_s"], ".1f"),
            fmt(r["eval_vs_zsclip"], ".3f"),
            fmt(r["peak_mib"], ".0f"),
            *([fmt(hm.get(r["method"]), ".2f")] if hm else []),
        )
    console.print(table, width=max(console.width, 100))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for path in calibration.save(rows, dev, results_root):
        console.print(f"calibration: {path}", highlight=False)
