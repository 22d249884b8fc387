"""The LLM knowledge cache: its layout on disk (one source for reader and writer) and its reader.

A cache directory, written by `dplbench llm cache` (dplbench/llm/build.py):

    manifest.json            model id and revision, layer shape, RoPE, dtype, and per dataset:
                             its class list (and sha256), templates, sequence length, file
    layer.safetensors        the LLM's last decoder layer (Hugging Face names under "layer."),
                             its final norm ("norm.weight") and RoPE frequencies ("inv_freq")
    <dataset>.safetensors    that layer's keys and values over every (template, class) prompt:
                             keys/values [T,C,kv_heads,S,head_dim], mask [T,C,S] (1 = real token)
    <dataset>.json           the descriptions the LLM wrote, per template and class (for reading)

Only the last layer's keys and values are kept: that is all the trainable layer copy attends to
(the release caches the same, `past_key_values[-1:]`), and for grouped-query models such as
Llama-3 it is half the size of the hidden states entering the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dpl.llm.decoder import LlamaLayerShape
from dpl.llm.manifest import (  # noqa: F401  (the layout, re-used by the writer)
    FORMAT,
    LAYER_FILE,
    MANIFEST,
    CacheError,
    classes_sha,
    dataset_file,
    misfit,
    read_manifest,
    recipe_of,
)


def layer_shape(manifest: dict) -> LlamaLayerShape:
    return LlamaLayerShape(**manifest["layer"])


@dataclass
class ClassKnowledge:
    """The cached prefix of one class list, per template: what the LLM prompt tokens attend to."""

    keys: torch.Tensor  # [T,C,kv_heads,S,head_dim]
    values: torch.Tensor  # [T,C,kv_heads,S,head_dim]
    mask: torch.Tensor  # [T,C,S] bool

    @property
    def templates(self) -> int:
        return self.keys.shape[0]


class LlmCache:
    """Read side of a cache directory. Dataset files load on first use and stay in host memory
    (the release keeps its caches on the CPU too and moves one template per step)."""

    def __init__(
        self, cache_dir: str | Path, model: str | None = None, recipe: str | None = None
    ) -> None:
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        why = misfit(self.manifest, model, recipe or recipe_of(self.manifest))
        if why is not None:
            raise CacheError(
                f"LLM cache {self.dir} does not fit: {why}; build one with `dplbench llm cache "
                f"--model {model or self.manifest['model']} --recipe {recipe} ...`"
            )
        self._loaded: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def shape(self) -> LlamaLayerShape:
        return layer_shape(self.manifest)

    def layer_state(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.dir / LAYER_FILE))

    def datasets(self) -> list[str]:
        return list(self.manifest["datasets"])

    def find_dataset(self, classnames: tuple[str, ...], dataset: str | None) -> str:
        entries = self.manifest["datasets"]
        if dataset is not None:
            if dataset not in entries:
                raise CacheError(
                    f"LLM cache {self.dir} has no dataset {dataset!r} (it has "
                    f"{', '.join(entries) or 'none'}); add it with `dplbench llm cache "
                    f"--model {self.manifest['model']} --datasets {dataset} --out {self.dir}`"
                )
            return dataset
        fits = [d for d, e in entries.items() if set(classnames) <= set(e["classes"])]
        if len(fits) != 1:
            raise CacheError(
                f"LLM cache {self.dir}: {len(fits)} datasets hold these classes; name the dataset"
            )
        return fits[0]

    def teacher_features(self, classnames: tuple[str, ...], dataset: str) -> torch.Tensor:
        """The text target t^o [C,E] of `classnames` from a release's own text-embedding file
        (imported: the dataset's `teacher_file`), normalised, in the asked order."""
        from safetensors.torch import load_file

        entry = self.manifest["datasets"][dataset]
        feats = load_file(str(self.dir / entry["teacher_file"]))["features"].float()
        index = {c: i for i, c in enumerate(entry["classes"])}
        missing = [c for c in classnames if c not in index]
        if missing:
            raise CacheError(
                f"LLM cache {self.dir}: {dataset}'s teacher has no class {missing[0]!r}"
            )
        rows = feats[[index[c] for c in classnames]]
        return torch.nn.functional.normalize(rows, dim=-1)

    def texts(self, dataset: str) -> list[dict]:
        """What the LLM wrote for a dataset, per template: descriptions and noun phrases per
        class in the cache's class order (<dataset>.json)."""
        import json

        return json.loads((self.dir / f"{dataset}.json").read_text())

    def knowledge(self, classnames: tuple[str, ...], dataset: str | None = None) -> ClassKnowledge:
        """The rows of `classnames`, in that order. A class the cache was not built for is an
        error: the prompts would attend to another class's description."""
        name = self.find_dataset(classnames, dataset)
        entry = self.manifest["datasets"][name]
        index = {c: i for i, c in enumerate(entry["classes"])}
        missing = [c for c in classnames if c not in index]
        if missing or classes_sha(entry["classes"]) != entry["classes_sha"]:
            raise CacheError(
                f"LLM cache {self.dir} was built for another class list of {name} (no class "
                f"{missing[0]!r}); rebuild it with `dplbench llm cache --model "
                f"{self.manifest['model']} --datasets {name} --out {self.dir} --force`"
                if missing
                else f"LLM cache {self.dir}: {name}'s class list does not match its sha256"
            )
        if name not in self._loaded:
            from safetensors.torch import load_file

            self._loaded[name] = load_file(str(self.dir / entry["file"]))
        t = self._loaded[name]
        rows = torch.tensor([index[c] for c in classnames])
        return ClassKnowledge(t["keys"][:, rows], t["values"][:, rows], t["mask"][:, rows].bool())
