"""The LLM cache's layout on disk and its manifest (torch-free: planning reads manifests only).
The layout is described in dpl/llm/cache.py; `dplbench llm cache` writes it (dplbench/llm/build.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = 1
MANIFEST = "manifest.json"
LAYER_FILE = "layer.safetensors"


class CacheError(ValueError):
    """A cache that is missing or does not fit the job; the message says how to make one."""


def classes_sha(classnames: list[str] | tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(classnames).encode()).hexdigest()


def dataset_file(dataset: str) -> str:
    return f"{dataset}.safetensors"


def read_manifest(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise CacheError(
            f"no LLM cache at {cache_dir} ({MANIFEST} missing); make it with "
            f"`dplbench llm cache --model <HF id or dir> --datasets ... --out {cache_dir}`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path}: cache format {manifest.get('format')}, expected {FORMAT}")
    return manifest


# Caches made before recipes existed were made with DroPLe's.
DEFAULT_RECIPE = "drople"


def recipe_of(manifest: dict) -> str:
    """The recipe's label: its name, plus what `llm cache --dtype / --max-new-tokens` changed
    ("drople+dtype=fp32")."""
    return manifest.get("recipe") or DEFAULT_RECIPE


def base_recipe(label: str) -> str:
    """The recipe a label belongs to: "drople+dtype=fp32" and "llamp-release-files" (a release's
    own knowledge files, `dplbench llm import`) are caches for the jobs of drople / llamp."""
    return label.split("+", 1)[0].removesuffix("-release-files")


# What a dataset's `phrases` says when a cache was made without an extractor that anyone chose:
# spaCy was missing and older dplbench kept the whole description (dplbench/llm/phrases.py).
UNCHOSEN_PHRASES = "description"


def same_model(manifest: dict, model: str) -> bool:
    """Whether the cache came from `model` (a hub id, or a local folder: by its path)."""
    cached = manifest["model"]
    if cached == model:
        return True
    local = Path(model).expanduser()
    return local.is_dir() and Path(cached).is_dir() and local.resolve() == Path(cached).resolve()


def misfit(manifest: dict, model: str | None, recipe: str) -> str | None:
    """Why a cache does not fit a job that needs `model` (None: any) and `recipe` (None: fits):
    another LLM, another recipe (its label may carry changed values: they enter the job's
    identity), or descriptions kept whole because spaCy was missing, which nobody asked for."""
    if base_recipe(recipe_of(manifest)) != base_recipe(recipe):
        return f"it was made with the {recipe_of(manifest)} recipe, the job needs {recipe}"
    unchosen = [
        d for d, e in manifest.get("datasets", {}).items() if e.get("phrases") == UNCHOSEN_PHRASES
    ]
    if unchosen:
        return (
            f"its {', '.join(unchosen)} phrases are whole descriptions, not the releases' noun "
            "phrases (spaCy was not installed when it was made): pip install 'dplbench[llm]' && "
            "python -m spacy download en_core_web_sm, then rebuild with `dplbench llm cache ... "
            "--force`, or make it with --phrases none to train on whole descriptions"
        )
    if model is not None and not same_model(manifest, model):
        return f"it was made from {manifest['model']!r}, the job needs {model!r}"
    return None


def identity(manifest: dict, datasets: list[str] | tuple[str, ...]) -> dict:
    """What a job reads from a cache, as data that names no path: the LLM (its hub id and
    revision, or the content hash of a local model folder), how the cache was made (format,
    dtype, generation length, phrase extraction) and, per dataset the job reads, its class list's
    and templates' hashes. Two caches with the same identity hold the same knowledge, wherever
    they live; a job's id hashes this, never the cache's directory."""
    out: dict = {
        "model": manifest.get("model_sha256")
        and f"local:{manifest['model_sha256'][:16]}"
        or manifest["model"],
        "revision": manifest.get("revision"),
        "recipe": recipe_of(manifest),
        "format": manifest.get("format"),
        "dtype": manifest.get("dtype"),
        "datasets": {},
    }
    if "phrases" in manifest:  # the extractor (older caches did not record it: their ids stay)
        out["phrases"] = manifest["phrases"]
    for d in sorted(set(datasets)):
        e = manifest.get("datasets", {}).get(d)
        out["datasets"][d] = (
            None
            if e is None
            else {
                "classes_sha": e["classes_sha"],
                "templates_sha": hashlib.sha256("\n".join(e["templates"]).encode()).hexdigest(),
                "max_new_tokens": e.get("max_new_tokens"),
                "phrases": e.get("phrases"),
                # an imported cache: the release's files themselves (dplbench llm import)
                **({"source_sha256": e["source_sha256"]} if "source_sha256" in e else {}),
            }
        )
    return out
