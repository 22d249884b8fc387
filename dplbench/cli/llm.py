"""`dplbench llm ...`: the LLM prompt source's offline step (cache) and a tiny stand-in LLM."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from dplbench.cli.common import Data, console, csv_list, data_root, user_errors
from dplbench.errors import ConfigError
from dplbench.plan.llm import cache_dir

Opt = typer.Option
app = typer.Typer(
    help="Cache an LLM's class knowledge for llamp / dpl-release; make a tiny test LLM.",
    no_args_is_help=True,
)


def _class_lists(datasets: list[str], data: str) -> dict[str, list[str]]:
    """Each dataset's class names as the model prompts them (from the converted shards)."""
    from dplbench.data.errors import DataError
    from dplbench.data.meta import load_meta
    from dplbench.run.prepare import ensure_synthetic

    out = {}
    for d in datasets:
        if d == "synthetic":
            ensure_synthetic(data)
        try:
            names = load_meta(data, d).classnames
        except DataError as e:
            raise ConfigError(f"{e}; the cache step reads class names from the shards") from None
        out[d] = [n.replace("_", " ") for n in names]  # as PromptedCLIP.set_classes does
    return out


@app.command()
@user_errors
def cache(
    model: Annotated[str, Opt(help="HF model id or local folder (Llama-2/3 chat models)")],
    datasets: Annotated[str, Opt(help="comma list of datasets")],
    out: Annotated[str, Opt(help="cache directory ($DPLBENCH_LLM_CACHE, ./llm-cache)")] = None,
    data: Data = None,
    recipe: Annotated[
        str, Opt(help="drople (dpl-release) | llamp: how the release's tool makes its cache")
    ] = "drople",
    dtype: Annotated[
        str, Opt(help="bf16 | fp16 | fp32: the LLM's and the cache's (default: the recipe's)")
    ] = None,
    device: Annotated[str, Opt(help="cuda | cpu (default: cuda when there is one)")] = None,
    revision: Annotated[str, Opt(help="HF revision (branch, tag or commit)")] = None,
    gpus: Annotated[int, Opt(help="> 1: one Ray task per dataset, one GPU each")] = 0,
    max_new_tokens: Annotated[
        int, Opt(help="description length (default: the recipe's; DroPLe 128, LLaMP 64)")
    ] = None,
    batch: Annotated[int, Opt(help="prompts per LLM batch")] = 16,
    force: Annotated[bool, Opt(help="rebuild datasets that are cached already")] = False,
    phrases: Annotated[
        str,
        Opt(
            help="spacy:<pipeline or folder> (the releases': spacy:en_core_web_sm) | none: whole "
            "descriptions, a deviation (docs/deviations.md §2)"
        ),
    ] = "spacy:en_core_web_sm",
) -> None:
    """Run the frozen LLM once over every class and template; keep its last layer's keys and
    values for training. Resumes; refuses to mix models, recipes or phrase extractors in one
    directory. A changed --dtype or --max-new-tokens enters the recipe's label.

    Example: dplbench llm cache --model meta-llama/Meta-Llama-3-8B-Instruct --datasets dtd,eurosat
    """
    from dplbench.llm.build import build_cache

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = csv_list(datasets)
    if not names:
        raise ConfigError("--datasets: name at least one dataset")
    out = cache_dir(out)
    if Path(model).is_dir():  # a local folder: recorded absolute, so the name means one model
        model = str(Path(model).resolve())
    manifest = build_cache(
        model, _class_lists(names, data_root(data)), out, dtype, device, revision, force,
        max_new_tokens, batch, gpus, recipe, phrases,
    )  # fmt: skip
    cached = ", ".join(
        f"{d} ({len(e['classes'])} classes)" for d, e in manifest["datasets"].items()
    )
    console.print(f"LLM cache {out}: {cached}", highlight=False)


@app.command("import")
@user_errors
def import_(
    model: Annotated[str, Opt(help="the LLM the release used (its last layer is copied)")],
    dataset: Annotated[str, Opt(help="the dataset the files belong to")],
    past_key_values: Annotated[
        str, Opt(help="the release's past-key-value file (LLaMP: release_past_key_value.pt)")
    ],
    text_embeddings: Annotated[
        str, Opt(help="its CLIP text-embedding file (LLaMP: release_clip_text_embeddings.pt)")
    ] = None,
    out: Annotated[str, Opt(help="a new cache directory")] = None,
    data: Data = None,
    recipe: Annotated[str, Opt(help="llamp | drople: whose files they are")] = "llamp",
    dtype: Annotated[str, Opt(help="bf16 | fp16 | fp32 (default: the recipe's)")] = None,
    device: Annotated[str, Opt(help="cuda | cpu")] = None,
    revision: Annotated[str, Opt(help="HF revision of the LLM")] = None,
    phrases: Annotated[
        str, Opt(help="noun phrases of the descriptions: spacy:<pipeline> | none")
    ] = "spacy:en_core_web_sm",
) -> None:
    """Read a release's published knowledge files into a cache (recipe <name>-release-files),
    so its jobs train on the knowledge behind the published numbers.

    Example: dplbench llm import --model meta-llama/Llama-2-7b-chat-hf --dataset dtd
    --past-key-values dtd/release_past_key_value.pt --text-embeddings
    dtd/release_clip_text_embeddings.pt --out llm-cache/llamp-release
    """
    from dplbench.llm.release_files import import_release

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if recipe not in ("llamp", "drople"):
        raise ConfigError(f"--recipe {recipe!r}: choose llamp or drople")
    out = cache_dir(out)
    if Path(model).is_dir():
        model = str(Path(model).resolve())
    names = _class_lists([dataset], data_root(data))[dataset]
    manifest = import_release(model, dataset, names, past_key_values, out, recipe,
                              text_embeddings, dtype, device, revision, phrases)  # fmt: skip
    teacher = "with" if text_embeddings else "without"
    console.print(f"LLM cache {out}: {dataset} ({len(names)} classes) from {past_key_values}, "
                  f"{teacher} the release's teacher features; recipe {manifest['recipe']}",
                  highlight=False, soft_wrap=True)  # fmt: skip


@app.command()
@user_errors
def tiny(
    out: Annotated[str, Opt(help="folder for the model and tokenizer")] = "llm-tiny",
    datasets: Annotated[str, Opt(help="datasets whose class names it should know")] = "synthetic",
    data: Data = None,
    seed: Annotated[int, Opt(help="weights seed")] = 0,
) -> None:
    """A tiny random-init Llama with a word-level tokenizer and a chat template: the real
    cache and training paths on a CPU, without a download. It knows nothing.

    Example: dplbench llm tiny --out llm-tiny && dplbench llm cache --model llm-tiny --datasets synthetic
    """
    from dplbench.llm.phrases import write_standin_pipeline
    from dplbench.llm.tiny import make_tiny_llm

    lists = _class_lists(csv_list(datasets) or [], data_root(data))
    names = [n for ns in lists.values() for n in ns]
    path = make_tiny_llm(out, names, tuple(lists) or ("synthetic",), seed=seed)
    phrases = write_standin_pipeline(str(Path(path) / "phrases"))
    console.print(f"tiny LLM in {path}; its stand-in phrase pipeline: --phrases spacy:{phrases}",
                  highlight=False)  # fmt: skip
