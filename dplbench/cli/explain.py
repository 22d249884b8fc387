"""`dplbench explain`: IWTD's token maps and Grad-CAM for a job's model on a few test images."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markdown import Markdown

from dplbench.cli.common import (
    Data,
    Overrides,
    Results,
    console,
    csv_list,
    data_root,
    results_root,
    user_errors,
)
from dplbench.errors import ConfigError

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command()(explain)


@user_errors
def explain(
    job: Annotated[str, Opt(help="a job id of the results (its trained model)")] = None,
    method: Annotated[str, Opt(help="instead of --job: an untrained method")] = None,
    dataset: Annotated[
        str,
        Opt(
            help="with --method: the dataset; with --job: which of its "
            "evaluation datasets (default: the first)"
        ),
    ] = None,
    protocol: Annotated[str, Opt(help="with --method: the recipe's protocol section")] = None,
    seed: Annotated[int, Opt(help="with --method: the prompt initialisation seed")] = 1,
    images: Annotated[int, Opt(help="test images to explain (distinct classes first)")] = 4,
    layers: Annotated[
        str, Opt(help="comma list of layer indices (default: first, middle and last IWTD layer)")
    ] = None,
    out: Annotated[str, Opt(help="output folder (default: RESULTS/explain/<job>)")] = None,
    device: Annotated[str, Opt(help="cuda / cpu (default: cuda if available)")] = None,
    data: Data = None,
    results: Results = None,
    llm_cache: Annotated[
        str, Opt("--llm-cache", help="with --job of llamp / dpl-release: the LLM cache it read")
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Per image: the image, Grad-CAM of the method's and of zero-shot CLIP's prediction, and per
    layer the S_cls, S_self, S_cross, importance, drop-probability maps and one sampled drop mask
    over the patch grid. Text side: the same per prompt token (text_tokens.md); all maps as arrays
    in maps.npz.

    Example: dplbench explain --job 3f2a9c0d1e4b5a6f --images 8
    """
    import torch

    from dplbench.analysis import explain as ex
    from dplbench.plan.config import parse_overrides

    root = results_root(results)
    if (job is None) == (method is None):
        raise ConfigError("give --job JOB_ID (a trained job) or --method M --dataset D")
    if job is not None:
        if overrides:
            raise ConfigError("--job explains the job as it ran: drop the key=value overrides")
        subject = ex.job_subject(root, job, dataset, llm_cache)
    else:
        if dataset is None:
            raise ConfigError("--method needs --dataset (the test images to explain)")
        from dplbench.plan.suites import check_datasets

        check_datasets([dataset])
        subject = ex.method_subject(method, dataset, parse_overrides(overrides), seed, protocol)
    try:
        chosen = [int(v) for v in csv_list(layers)] if layers else None
    except ValueError:
        raise ConfigError(f"--layers {layers!r}: give layer indices, e.g. 0,4,8") from None
    result = ex.explain(
        subject, data_root(data), root, out, images, chosen,
        torch.device(device) if device else None,
    )  # fmt: skip
    console.print(Markdown(result.text))
    for path in result.figures:
        console.print(f"figure: {path}")
    console.print(f"text table: {result.table}\narrays: {result.arrays}")
