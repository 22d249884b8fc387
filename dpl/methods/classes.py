"""The class list of a model: its prompt tokens and the frozen text features t^o, computed once per
class list (and, being a function of the frozen CLIP alone, once per process for every model on
that CLIP). Mixed into PromptedCLIP (which provides `clip`, `text`, `tokenizer`, `cfg`,
`prompt_prefix`, `_classes`, `_current`, `_eval_text`)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpl.templates import RAW_MEAN_SETS, template_set

# A per-process cache: frozen text features per frozen CLIP object (ClassLists._frozen_text).
_FROZEN_TEXT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class ClassSet:
    """Everything constant about one class list: prompt tokens and frozen text features."""

    names: tuple[str, ...]
    embedded: torch.Tensor  # [C,L,D] frozen token embeddings of "<ctx words> <name>."
    eot: torch.Tensor  # [C]
    frozen_text: torch.Tensor  # [C,E] t^o, normalised template mean
    # Whether `embedded` already holds the position embeddings (the LLaMP suffix layout's does)
    with_positions = False


class ClassLists:
    def set_classes(
        self,
        classnames: list[str],
        dataset_template: str = "a photo of a {}.",
        dataset: str | None = None,
    ) -> None:
        """Select the class list; its frozen text features are computed once and cached. The
        dataset's name matters only to methods with per-dataset knowledge (the LLM source)."""
        names = tuple(n.replace("_", " ") for n in classnames)
        templates = template_set(self.cfg.templates, self.cfg.dataset_template or dataset_template)
        key = (names, templates, dataset)
        if key not in self._classes:
            self._classes[key] = self._build_class_set(names, templates, dataset)
        self._current = key
        self._eval_text = None

    @property
    def classes(self) -> ClassSet:
        if self._current is None:
            raise RuntimeError("call set_classes(classnames, template) before using the model")
        return self._classes[self._current]

    @torch.no_grad()
    def _build_class_set(
        self, names: tuple[str, ...], templates: tuple[str, ...], dataset: str | None = None
    ) -> ClassSet:
        device = self.clip.logit_scale.device
        ids = self.tokenizer([f"{self.prompt_prefix} {n}." for n in names]).to(device)
        embedded, eot = self.text.embed(ids)
        return ClassSet(names, embedded, eot, self._frozen_text(names, templates).to(device))

    @torch.no_grad()
    def _frozen_text(self, names: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
        """t^o: the original text tower (no prompts, no hooks), mean over the template set. A
        pure function of the frozen CLIP: cached per CLIP object, so jobs that share a frozen
        backbone in one process (reused trial actors) encode a class list once."""
        raw_mean = self.cfg.templates in RAW_MEAN_SETS
        key = (names, templates, raw_mean)
        cache = _FROZEN_TEXT.setdefault(self.clip, {})
        if key not in cache:
            device = self.clip.logit_scale.device
            feats = []
            for tpl in templates:
                t_ids = self.tokenizer([tpl.format(n) for n in names]).to(device)
                e, p = self.text.embed(t_ids)
                f = self.text(e, p, adapters=False).float()
                feats.append(f if raw_mean else F.normalize(f, dim=-1))
            cache[key] = F.normalize(torch.stack(feats).mean(0), dim=-1)
        return cache[key]
