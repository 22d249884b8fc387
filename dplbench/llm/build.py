"""`dplbench llm cache`: run the frozen LLM once over every (template, class) and keep what the
LLM prompt source trains against (the cache layout is dpl/llm/cache.py).

Per dataset, as the releases' tools/run_inference_chat.py does (JustCoolPig/DroPLe @ 3c2ef2a,
zhaohengz/LLaMP @ 3dec7f3), by the recipe of each (`RECIPES`, `--recipe`):
1. the user message "In one sentence, " (LLaMP: "In one sentece, ", as shipped) +
   template.format(name), wrapped in the model's chat template (system "You are a helpful
   assistant.", no generation prompt), then the raw text " The {name} appears as"; tokenised
   with truncation at 256 tokens (LLaMP: 128);
2. greedy generation (max 128 new tokens; LLaMP: 64) of a description, in fp16 (LLaMP: fp32);
3. its noun phrases, ", "-joined (spaCy en_core_web_sm noun_chunks; `--phrases none`: the
   description itself, docs/deviations.md §2; dplbench/llm/phrases.py);
4. one forward pass over [prompt | phrases] (left-padded each, so the phrase padding sits between
   them, masked) keeping the last layer's keys and values.

`transformers` is imported by loaded.py only (`pip install dplbench[llm]`); training reads the cache
with plain PyTorch and safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from dpl.llm.cache import FORMAT, LAYER_FILE, MANIFEST, classes_sha, dataset_file
from dpl.llm.manifest import recipe_of
from dplbench.errors import ConfigError, UserError
from dplbench.llm.loaded import LoadedLLM, layer_manifest, layer_tensors, load_llm
from dplbench.llm.phrases import DEFAULT, Extractor, load_extractor, record_label
from dplbench.llm.recipes import RECIPES, SYSTEM, Recipe, llm_templates
from dplbench.storage import write_atomic

log = logging.getLogger(__name__)


def recipe_label(recipe: str, dtype: str, max_new_tokens: int) -> str:
    """The recipe's name, with what --dtype / --max-new-tokens changed: "drople", or
    "drople+dtype=fp32,max_new_tokens=6". The manifest and every job's identity carry it."""
    r = RECIPES[recipe]
    changed = [f"dtype={dtype}"] if dtype != r.dtype else []
    changed += [f"max_new_tokens={max_new_tokens}"] if max_new_tokens != r.max_new_tokens else []
    return recipe + ("+" + ",".join(changed) if changed else "")


def prompts_for(
    llm: LoadedLLM, names: list[str], template: str, instruction: str = "In one sentence, "
) -> list[str]:
    out = []
    for name in names:
        msg = instruction + template.format(name)
        chat = llm.tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": msg}],
            tokenize=False,
        )
        out.append(chat + f" The {name} appears as")
    return out


def _encode(llm: LoadedLLM, texts: list[str], max_length: int):
    """Left-padded (LoadedLLM), truncated where the release's tool truncates (Recipe)."""
    return llm.tokenizer(
        texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length
    )


@torch.no_grad()
def describe(
    llm: LoadedLLM, prompts: list[str], max_new_tokens: int, batch: int, max_prompt: int = 256
) -> list[str]:
    tok, out = llm.tokenizer, []
    for i in range(0, len(prompts), batch):
        enc = _encode(llm, prompts[i : i + batch], max_prompt).to(llm.device)
        gen = llm.model.generate(
            **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id
        )
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def pad_to(t: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """Right-padded with zeros along dim to length: masked positions, never attended."""
    shape = list(t.shape)
    shape[dim] = length - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim)


@torch.no_grad()
def last_layer_kv(
    llm: LoadedLLM,
    prompts: list[str],
    phrases: list[str],
    batch: int,
    max_prompt: int = 256,
    max_phrase: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """keys, values [C,kv,S,hd] and mask [C,S] of the whole class list (S: the longest)."""
    ks, vs, ms = [], [], []
    for i in range(0, len(prompts), batch):
        a = _encode(llm, prompts[i : i + batch], max_prompt)
        b = _encode(llm, phrases[i : i + batch], max_phrase)
        ids = torch.cat([a["input_ids"], b["input_ids"]], 1).to(llm.device)
        mask = torch.cat([a["attention_mask"], b["attention_mask"]], 1).to(llm.device)
        # Llama numbers the real tokens 0..n-1 whatever the padding (prepare_inputs_for_generation)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = llm.model.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True
        )
        # transformers 5 names the cache `cache` (`past_key_values` is its deprecated alias)
        cache = out.get("cache") if "cache" in out else out.past_key_values
        layer = cache.layers[-1]
        ks.append(layer.keys.cpu())
        vs.append(layer.values.cpu())
        ms.append(mask.cpu())
    S = max(m.shape[1] for m in ms)

    return (
        torch.cat([pad_to(k, 2, S) for k in ks]),
        torch.cat([pad_to(v, 2, S) for v in vs]),
        torch.cat([pad_to(m, 1, S) for m in ms]),
    )


def build_dataset(
    llm: LoadedLLM,
    dataset: str,
    names: list[str],
    out: Path,
    recipe: Recipe,
    max_new_tokens: int | None = None,
    batch: int = 16,
    extractor: Extractor | None = None,
) -> dict:
    """Write <dataset>.safetensors and .json; return its manifest entry."""
    from safetensors.torch import save_file

    max_new_tokens = max_new_tokens or recipe.max_new_tokens
    templates = llm_templates(dataset)
    extractor = extractor or load_extractor()
    phrase_kind, chunks_of = extractor.kind, extractor.chunks
    keys, values, masks, texts = [], [], [], []
    for t, template in enumerate(templates):
        prompts = prompts_for(llm, names, template, recipe.instruction)
        descriptions = describe(llm, prompts, max_new_tokens, batch, recipe.max_prompt_tokens)
        chunks = [chunks_of(d) for d in descriptions]
        phrases = [d.strip() if c is None else ", ".join(c) for d, c in zip(descriptions, chunks)]
        k, v, m = last_layer_kv(
            llm, prompts, phrases, batch, recipe.max_prompt_tokens, recipe.max_phrase_tokens
        )
        keys.append(k)
        values.append(v)
        masks.append(m)
        text = {"template": template, "descriptions": descriptions, "phrases": phrases}
        if phrase_kind == "spacy_noun_chunks":
            text["chunks"] = chunks  # the teacher text's strings (dpl/llm/teacher.py)
        texts.append(text)
        log.info("%s: template %d/%d done", dataset, t + 1, len(templates))
    S = max(m.shape[1] for m in masks)

    tensors = {
        "keys": torch.stack([pad_to(k, 2, S) for k in keys]),
        "values": torch.stack([pad_to(v, 2, S) for v in values]),
        "mask": torch.stack([pad_to(m, 1, S) for m in masks]).to(torch.uint8),
    }
    file = dataset_file(dataset)
    write_atomic(out / file, lambda p: save_file(tensors, str(p)))
    write_atomic(out / f"{dataset}.json", json.dumps(texts, indent=1))
    return {
        "classes": list(names),
        "classes_sha": classes_sha(names),
        "templates": templates,
        "file": file,
        "seq": S,
        "phrases": phrase_kind,
        "max_new_tokens": max_new_tokens,
    }


def stale_datasets(
    model: str,
    classes: dict[str, list[str]],
    out: Path,
    force: bool = False,
    recipe: str = "drople",
    phrases: dict | str | None = None,
) -> dict[str, list[str]]:
    """The datasets of `classes` the cache at `out` lacks (or holds for other classes/templates).
    A cache made from another model, with another recipe (label) or another phrase extractor is
    refused rather than mixed."""
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest and manifest.get("model") != model:
        raise UserError(
            f"{out} holds a cache of {manifest.get('model')!r}, not {model!r}; choose another --out"
        )
    if manifest and recipe_of(manifest) != recipe:
        raise UserError(
            f"{out} holds a cache made with the {recipe_of(manifest)} recipe, not {recipe}; "
            "choose another --out"
        )
    if manifest and phrases is not None and manifest.get("phrases") != phrases:
        raise UserError(
            f"{out} holds a cache whose phrases come from {record_label(manifest.get('phrases'))}, "
            f"not {record_label(phrases)}; choose another --out"
        )
    todo = {}
    for name, names in classes.items():
        entry = manifest.get("datasets", {}).get(name)
        fresh = (
            entry is not None
            and entry["classes_sha"] == classes_sha(names)
            and entry["templates"] == llm_templates(name)
            and (out / entry["file"]).is_file()
        )
        if force or not fresh:
            todo[name] = names
    return todo


def folder_sha256(folder: str | Path) -> str:
    """The content hash of a local model folder (every file, by relative name): what names a
    local model in a job's identity, since its path says nothing about its weights."""
    h = hashlib.sha256()
    root = Path(folder)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def build_part(
    model: str,
    classes: dict[str, list[str]],
    out: str | Path,
    dtype: str,
    device: str | None,
    revision: str | None,
    max_new_tokens: int | None,
    batch: int,
    recipe: str = "drople",
    merge: bool = False,
    phrases: str = DEFAULT,
) -> tuple[dict, dict[str, dict]]:
    """Load the LLM once, write the layer file (same bytes from every part) and each dataset's
    files; return the manifest head and the datasets' entries. One Ray task runs one part;
    merge (one process only): each dataset enters the manifest as soon as it is written."""
    from safetensors.torch import save_file

    out = Path(out)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = load_extractor(phrases)
    llm = load_llm(model, dtype, device, revision)
    if not (out / LAYER_FILE).is_file():
        write_atomic(out / LAYER_FILE, lambda p: save_file(layer_tensors(llm), str(p)))
    head = {
        "format": FORMAT,
        "model": model,
        "model_sha256": folder_sha256(model) if Path(model).is_dir() else None,
        "revision": llm.revision,
        "recipe": recipe_label(recipe, dtype, max_new_tokens or RECIPES[recipe].max_new_tokens),
        "dtype": dtype,
        "phrases": extractor.record,
        "layer": layer_manifest(llm),
    }
    entries = {}
    for name, names in classes.items():
        entries[name] = build_dataset(
            llm, name, names, out, RECIPES[recipe], max_new_tokens, batch, extractor
        )
        log.info("%s: cached %d classes", name, len(names))
        if merge:
            _merge(out, head, {name: entries[name]})
    return head, entries


def _merge(out: Path, head: dict, entries: dict[str, dict]) -> dict:
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {**head, "datasets": {}}
    manifest["datasets"].update(entries)
    write_atomic(path, json.dumps(manifest, indent=1))
    return manifest


def build_cache(
    model: str,
    classes: dict[str, list[str]],
    out: str | Path,
    dtype: str | None = None,
    device: str | None = None,
    revision: str | None = None,
    force: bool = False,
    max_new_tokens: int | None = None,
    batch: int = 16,
    gpus: int = 0,
    recipe: str = "drople",
    phrases: str = DEFAULT,
) -> dict:
    """Cache every dataset of `classes` (dataset -> prompt-ready class names) into `out`, as
    `recipe`'s release does (RECIPES: its precision and generation length unless given; what
    differs enters the recipe's label), its phrases from the extractor `phrases` names
    (dplbench/llm/phrases.py).

    Resumes: a dataset already cached for the same class list and templates is kept (unless
    force); each dataset lands in the manifest as soon as it is written. gpus > 1: one Ray task
    per dataset, each on its own GPU (the LLM loaded once per task)."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    out = Path(out)
    dtype = dtype or RECIPES[recipe].dtype
    label = recipe_label(recipe, dtype, max_new_tokens or RECIPES[recipe].max_new_tokens)
    extractor = load_extractor(phrases)  # before the LLM loads: a missing spaCy is one line
    todo = stale_datasets(model, classes, out, force, label, extractor.record)
    if not todo:
        log.info("%s: every dataset is cached already", out)
        return json.loads((out / MANIFEST).read_text())
    args = (dtype, device, revision, max_new_tokens, batch, recipe)
    if gpus <= 1 or len(todo) == 1:
        build_part(model, todo, out, *args, merge=True, phrases=phrases)
        return json.loads((out / MANIFEST).read_text())
    import ray

    task = ray.remote(num_gpus=1)(build_part)
    pending = {
        task.remote(model, {n: c}, str(out), *args, phrases=phrases): n for n, c in todo.items()
    }
    manifest = None
    while pending:
        done, _ = ray.wait(list(pending))
        head, entries = ray.get(done[0])
        pending.pop(done[0])
        manifest = _merge(out, head, entries)
    return manifest
