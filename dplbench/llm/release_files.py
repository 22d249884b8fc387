"""`dplbench llm import`: the knowledge files a release published, read into a dplbench cache, so
that `llamp` (or `dpl-release`) trains on exactly the knowledge behind its published numbers.

LLaMP's numbers were made with files distributed apart from its code (its README's data layout:
`release_past_key_value.pt`, `release_clip_text_embeddings.pt` beside each dataset; flags.py
--past_key_value_file / --clip_text_embed_file). Their formats, as its model reads them
(zhaohengz/LLaMP models/llamp.py:134-143, :193-229) and its tool writes them
(tools/run_inference_chat.py:100-180):

    past key values   {"base" | "new": [one per LLM template: {
                           "past_key_values": [layers, 2 (keys, values), C, kv_heads, S, head_dim],
                           "attn_mask": [C, S] (1 = real token; the prompt and the noun phrases,
                                                each left-padded),
                           "text_predictions": [C descriptions] }]}
    text embeddings   {"base" | "new": {"avg": [C, E]} or [C, E]}  (DroPLe's file nests the same
                       under "dw": models/drople.py:194-202)

C runs over the split's classes in label order: base is the first ceil(n/2) labels, new the rest
(dplbench/data/protocols.py, the CoOp split both releases use). Only the last layer is kept, as
the releases use it (`past_key_values[-num_decoder_layers:]`, num_decoder_layers = 1); the layer
itself is not in the files (the releases copy it from the LLM at training time), so the LLM is
loaded once to write layer.safetensors. Files are read with torch.load(weights_only=True) only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from dpl.files import sha256_file
from dpl.llm.cache import FORMAT, LAYER_FILE, MANIFEST, classes_sha, dataset_file
from dplbench.data.protocols import subsample_labels
from dplbench.errors import UserError
from dplbench.llm.build import folder_sha256, pad_to
from dplbench.llm.loaded import layer_manifest, layer_tensors, load_llm
from dplbench.llm.phrases import DEFAULT, load_extractor
from dplbench.llm.recipes import RECIPES, llm_templates
from dplbench.storage import write_atomic

log = logging.getLogger(__name__)

SPLITS = {"base": "base", "new": "novel"}  # the releases' split names -> ours
SUFFIX = "-release-files"  # the recipe label of an imported cache: "llamp-release-files"


def _load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: no such file (the release's {what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated, not a torch file
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path}: not the release's {what} as a weights-only file ({first}); dplbench reads "
            "these files with torch.load(weights_only=True) only"
        ) from None


def _bad(path: Path, what: str, why: str) -> UserError:
    return UserError(
        f"{path}: not the release's {what} format: {why} (dplbench/llm/release_files.py)"
    )


def read_past_key_values(path: Path) -> dict[str, list[dict[str, Any]]]:
    """split ("base", "new") -> per template {"keys", "values" [C,kv,S,hd], "mask" [C,S], "texts"}."""
    what = "past-key-value file"
    data = _load(path, what)
    if not isinstance(data, dict) or not set(SPLITS) <= set(data):
        raise _bad(path, what, "a dict with 'base' and 'new' lists")
    out = {}
    for split in SPLITS:
        items = data[split]
        if not isinstance(items, list) or not items:
            raise _bad(path, what, f"{split!r} is not a list of templates")
        rows = []
        for t, item in enumerate(items):
            kv, mask = item.get("past_key_values"), item.get("attn_mask")
            if not (isinstance(kv, torch.Tensor) and kv.ndim == 6 and kv.shape[1] == 2):
                raise _bad(path, what, f"{split}[{t}]['past_key_values'] is not [L,2,C,kv,S,hd]")
            c, s = kv.shape[2], kv.shape[4]
            if not (isinstance(mask, torch.Tensor) and tuple(mask.shape) == (c, s)):
                raise _bad(path, what, f"{split}[{t}]['attn_mask'] is not [C={c},S={s}]")
            texts = item.get("text_predictions") or [""] * c
            if len(texts) != c:
                raise _bad(
                    path, what, f"{split}[{t}] has {len(texts)} descriptions for {c} classes"
                )
            last = kv[-1]  # the last decoder layer: what the layer copy attends to
            rows.append({"keys": last[0], "values": last[1], "mask": mask, "texts": list(texts)})
        out[split] = rows
    return out


def read_text_embeddings(path: Path) -> dict[str, torch.Tensor]:
    """split -> the teacher's text features [C,E] (the "avg" entry, or the tensor itself)."""
    what = "CLIP text-embedding file"
    data = _load(path, what)
    if isinstance(data, dict) and "dw" in data:  # DroPLe's nesting
        data = data["dw"]
    if not isinstance(data, dict) or not set(SPLITS) <= set(data):
        raise _bad(path, what, "a dict with 'base' and 'new' (or 'dw' holding them)")
    out = {}
    for split in SPLITS:
        v = data[split]
        v = v.get("avg") if isinstance(v, dict) else v
        if not (isinstance(v, torch.Tensor) and v.ndim == 2):
            raise _bad(path, what, f"{split!r} is not [C,E] (or a dict with 'avg')")
        out[split] = v.float()
    return out


def import_release(
    model: str,
    dataset: str,
    classnames: list[str],
    past_key_values: str | Path,
    out: str | Path,
    recipe: str = "llamp",
    text_embeddings: str | Path | None = None,
    dtype: str | None = None,
    device: str | None = None,
    revision: str | None = None,
    phrases: str = DEFAULT,
) -> dict:
    """Write one dataset's cache at `out` from a release's files (module docstring); returns the
    manifest. `classnames`: the dataset's classes in label order, as the model prompts them."""
    out, pkv_path = Path(out), Path(past_key_values)
    if (out / MANIFEST).is_file():
        raise UserError(f"{out} holds a cache already; import into a new --out")
    labels = list(range(len(classnames)))
    names = {
        s: [classnames[i] for i in subsample_labels(labels, ours)] for s, ours in SPLITS.items()
    }
    kv = read_past_key_values(pkv_path)
    templates = llm_templates(dataset)
    for split, rows in kv.items():
        if len(rows) != len(templates):
            raise _bad(pkv_path, "past-key-value file", f"{split} has {len(rows)} templates, "
                       f"{dataset} has {len(templates)} (dplbench/configs/llm/templates.yaml)")  # fmt: skip
        for r in rows:
            if r["keys"].shape[0] != len(names[split]):
                raise _bad(pkv_path, "past-key-value file", f"{split} holds {r['keys'].shape[0]} "
                           f"classes, {dataset}'s {split} split has {len(names[split])}")  # fmt: skip
    teacher = read_text_embeddings(Path(text_embeddings)) if text_embeddings else None
    if teacher is not None:
        for split, feats in teacher.items():
            if feats.shape[0] != len(names[split]):
                raise _bad(Path(text_embeddings), "CLIP text-embedding file",
                           f"{split} holds {feats.shape[0]} classes, not {len(names[split])}")  # fmt: skip
    extractor = load_extractor(phrases)  # the teacher text's noun chunks when no embeddings
    dtype = dtype or RECIPES[recipe].dtype
    llm = load_llm(
        model, dtype, device or ("cuda" if torch.cuda.is_available() else "cpu"), revision
    )
    shape = layer_manifest(llm)
    k0 = kv["base"][0]["keys"]
    if (k0.shape[1], k0.shape[3]) != (shape["kv_heads"], shape["head_dim"]):
        raise UserError(
            f"{pkv_path}: keys of {k0.shape[1]} heads × {k0.shape[3]} do not fit {model}'s last "
            f"layer ({shape['kv_heads']} × {shape['head_dim']}); give the LLM the release used"
        )
    S = max(r["keys"].shape[2] for rows in kv.values() for r in rows)
    keys, values, masks, texts = [], [], [], []
    for t, template in enumerate(templates):
        parts = [kv[split][t] for split in SPLITS]  # base classes, then new: label order
        keys.append(torch.cat([pad_to(p["keys"], 2, S) for p in parts]))
        values.append(torch.cat([pad_to(p["values"], 2, S) for p in parts]))
        masks.append(torch.cat([pad_to(p["mask"], 1, S) for p in parts]))
        descriptions = [d for p in parts for d in p["texts"]]
        chunks = [extractor.chunks(d) for d in descriptions]
        text = {"template": template, "descriptions": descriptions,
                "phrases": [d if c is None else ", ".join(c) for d, c in zip(descriptions, chunks)]}  # fmt: skip
        if extractor.kind == "spacy_noun_chunks":
            text["chunks"] = chunks
        texts.append(text)
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / LAYER_FILE, lambda p: save_file(layer_tensors(llm), str(p)))
    tensors = {
        "keys": torch.stack(keys).to(llm.model.dtype).contiguous(),
        "values": torch.stack(values).to(llm.model.dtype).contiguous(),
        "mask": torch.stack(masks).to(torch.uint8).contiguous(),
    }
    file = dataset_file(dataset)
    write_atomic(out / file, lambda p: save_file(tensors, str(p)))
    write_atomic(out / f"{dataset}.json", json.dumps(texts, indent=1))
    all_names = names["base"] + names["new"]
    entry = {
        "classes": all_names,
        "classes_sha": classes_sha(all_names),
        "templates": templates,
        "file": file,
        "seq": S,
        "phrases": extractor.kind,
        "max_new_tokens": None,
        "source_sha256": {"past_key_values": sha256_file(pkv_path)},
    }
    if teacher is not None:
        feats = torch.cat([teacher["base"], teacher["new"]]).contiguous()
        entry["teacher_file"] = f"{dataset}.teacher.safetensors"
        entry["source_sha256"]["text_embeddings"] = sha256_file(text_embeddings)
        write_atomic(out / entry["teacher_file"], lambda p: save_file({"features": feats}, str(p)))
    manifest = {
        "format": FORMAT,
        "model": model,
        "model_sha256": folder_sha256(model) if Path(model).is_dir() else None,
        "revision": llm.revision,
        "recipe": recipe + SUFFIX,
        "dtype": dtype,
        "phrases": extractor.record,
        "layer": shape,
        "datasets": {dataset: entry},
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    log.info("%s: imported %d classes from %s", dataset, len(all_names), pkv_path)
    return manifest
