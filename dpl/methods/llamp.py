"""LLaMP (Zheng et al., CVPR 2024), the base the DPL release forks: LLM prompt tokens in CLIP's
text tower, beside IVLP-style deep context, vision prompts and vision LoRA (docs/dpl.md §7).

The text sequence of class c, of length S = L0 + P ("suffix" layout, DroPLe models/drople.py
`encode_LLM_prompt`, prompt_type='suffix'); L0 is the longest tokenised "a photo of a {name}"
of the class list, [EOT] included:

    [SOT] [ctx x4] [name tokens, then c's own [EOT] and padding, masked as keys] [P LLM tokens] [EOT]

- ctx replaces "a photo of a" (positions 1..4); the LLM tokens replace positions L0-1..S-2 and
  carry no position embedding; the final [EOT] is c's own [EOT] embedding (with the position it
  had), and the features are read there.
- Text layers 1..depth-1 replace the ctx and the LLM tokens again (their own prompts); class
  tokens and [EOT] flow on.
- Keys: causal, minus c's masked [EOT] and padding. Name tokens so cannot see the LLM tokens.
- Training samples one LLM template per step (all classes alike); evaluation averages the
  softmax of unscaled cosines over all templates (DroPLe `run`, `compute_all_class_embeddings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpl.config import MethodConfig
from dpl.encoders import TextCall, TokenLayout
from dpl.layers import resolve_depth
from dpl.llm.cache import CacheError, ClassKnowledge, LlmCache
from dpl.llm.prompt_source import LlmPromptSource
from dpl.llm.teacher import chunks_of, teacher_strings
from dpl.members import Streams
from dpl.methods.base import PromptedCLIP, member_rows
from dpl.methods.classes import _FROZEN_TEXT, ClassSet


@dataclass
class SuffixClassSet(ClassSet):
    """A class list's "a photo of a {name}" embeddings cut at L0, and its rows of the LLM cache.
    Unlike ClassSet.embedded, `embedded` here already has the position embeddings added (the
    suffix sequence is assembled from it by `_sequence`, never by TextEncoder.call, which would
    add them a second time)."""

    knowledge: ClassKnowledge | None = None
    with_positions = True


class LlampCLIP(PromptedCLIP):
    def __init__(self, cfg: MethodConfig, clip=None, gens=None) -> None:
        super().__init__(cfg, clip, gens)
        cfg = self.cfg
        lc = cfg.llm
        if not lc.cache:
            raise CacheError(
                f"method {cfg.method} needs an LLM cache: set llm.cache=DIR (dplbench: "
                "--llm-cache DIR; make one with `dplbench llm cache`, or a tiny test one with "
                "`dplbench llm tiny`)"
            )
        if self.text_prompts is None:
            raise ValueError(f"method {cfg.method} needs text context (prompts.n_ctx_text > 0)")
        self.cache = LlmCache(lc.cache, lc.model, lc.recipe)
        self.llm_depth = resolve_depth(lc.depth, self.text.layers)
        self.llm = LlmPromptSource(
            self.cache.shape, lc.n_tokens, self.text.width, self.llm_depth,
            tuple(gens) if gens is not None else (None,) * self.members,
        )  # fmt: skip
        self.llm.load_llm(self.cache.layer_state())
        self.llm.to(self.clip.logit_scale.device)

    # --- classes ------------------------------------------------------------------------------

    @torch.no_grad()
    def _build_class_set(self, names, templates, dataset=None) -> SuffixClassSet:
        clip = self.clip
        device = clip.logit_scale.device
        ids = self.tokenizer([f"{self.prompt_prefix} {n}" for n in names]).to(device)
        eot = ids.argmax(dim=-1)
        l0 = int(eot.max()) + 1
        total = l0 + self.llm.n_tokens
        if total > clip.positional_embedding.shape[0]:
            raise ValueError(
                f"{self.cfg.method}: the longest class prompt ({l0} tokens) plus "
                f"{self.llm.n_tokens} LLM tokens exceeds the text context of "
                f"{clip.positional_embedding.shape[0]}; lower llm.n_tokens"
            )
        # The releases' HF tokenizer pads with [EOT] where open_clip pads with 0 ("!"); the pads
        # are masked as keys but their hidden states reach MAG and IWTD's scores as queries
        pos = torch.arange(ids.shape[1], device=device)
        ids = torch.where(pos > eot[:, None], ids.gather(1, eot[:, None]), ids)
        cast = clip.transformer.get_cast_dtype()
        embedded = clip.token_embedding(ids[:, :l0]).to(cast) + clip.positional_embedding[:l0]
        knowledge = self.cache.knowledge(names, dataset)
        if self.cfg.teacher.text == "template":
            frozen = self._frozen_text(names, templates).to(device)
        else:
            frozen = self._teacher_text(names, dataset).to(device)
        return SuffixClassSet(names, embedded.to(cast), eot, frozen, knowledge)

    @torch.no_grad()
    def _teacher_text(self, names: tuple[str, ...], dataset: str | None) -> torch.Tensor:
        """t^o [C,E] from the LLM's descriptions as the release's tool builds it
        (dpl/llm/teacher.py): per class, the mean of the normalised features of its strings,
        through the original text tower. Cached per frozen CLIP, as `_frozen_text` is."""
        recipe = self.cfg.teacher.text
        name = self.cache.find_dataset(names, dataset)
        entry = self.cache.manifest["datasets"][name]
        if "teacher_file" in entry:  # a release's own text-embedding file (dplbench llm import)
            t = self.cache.teacher_features(names, name)
            width = self.clip.text_projection.shape[1]
            if t.shape[1] != width:
                raise CacheError(
                    f"LLM cache {self.cache.dir}: {name}'s teacher features are {t.shape[1]}-wide, "
                    f"this CLIP's text features {width}: they were made with another CLIP"
                )
            return t
        first = self.cache.texts(name)[0]  # the release's tools read the first template only
        index = {c: i for i, c in enumerate(entry["classes"])}
        kind = entry.get("phrases", "description")
        strings = [
            teacher_strings(recipe, name, n, chunks_of(first, index[n], kind)) for n in names
        ]
        key = ("teacher", recipe, names, tuple(map(tuple, strings)))
        cache = _FROZEN_TEXT.setdefault(self.clip, {})
        if key not in cache:
            device = self.clip.logit_scale.device
            flat = [s for per_class in strings for s in per_class]
            ids = self.tokenizer(flat).to(device)
            feats = []
            for chunk in ids.split(256):  # bounded batches: ImageNet has thousands of strings
                e, p = self.text.embed(chunk)
                feats.append(F.normalize(self.text(e, p, adapters=False).float(), dim=-1))
            per_class = torch.cat(feats).split([len(s) for s in strings])
            cache[key] = F.normalize(torch.stack([f.mean(0) for f in per_class]), dim=-1)
        return cache[key]

    # --- the suffix sequence ------------------------------------------------------------------

    def _sequence(
        self, cs: SuffixClassSet, ctx0: torch.Tensor, llm0: torch.Tensor, with_layout: bool
    ) -> tuple[torch.Tensor, torch.Tensor, TokenLayout | None]:
        """The members' suffix sequences [K·C,S,D] (module docstring): ctx0 [K,n,D] each
        member's layer-0 context, llm0 [K·C,P,D] its LLM tokens."""
        clip = self.clip
        C, l0, _ = cs.embedded.shape
        k, n, P = ctx0.shape[0], ctx0.shape[1], llm0.shape[1]
        S = l0 + P
        x = cs.embedded
        rows = torch.arange(C, device=x.device)
        ctx = (ctx0 + clip.positional_embedding[1 : 1 + n]).to(x.dtype)  # [K,n,D]
        ctx = ctx[:, None].expand(-1, C, -1, -1).flatten(0, 1)  # [K·C,n,D]
        rep = (lambda t: t) if k == 1 else (lambda t: t.repeat(k, *([1] * (t.dim() - 1))))
        x = torch.cat(
            [rep(x[:, :1]), ctx, rep(x[:, 1 + n : l0 - 1]), llm0.to(x.dtype),
             rep(x[rows, cs.eot][:, None])], 1,
        )  # fmt: skip
        pos = torch.arange(S, device=x.device)[None]  # [1,S]
        eot = cs.eot[:, None]
        valid = (pos < eot) | (pos >= l0 - 1)  # [C,S]: keys; c's own [EOT] and pads are not
        causal = pos.T >= pos  # [S,S] query >= key
        visible = causal[None] & valid[:, None, :]  # [C,S,S]
        mask = torch.zeros(visible.shape, dtype=x.dtype, device=x.device)
        mask = rep(mask.masked_fill(~visible, float("-inf")))
        layout = None
        if with_layout:
            content = (pos < S - 1).expand(C, -1)
            # DroPLe token_importance: SOT + ctx and the LLM tokens; never names or [EOT].
            target = ((pos < 1 + n) | ((pos >= l0 - 1) & (pos < S - 1))).expand(C, -1)
            g = torch.full((C,), S - 1, dtype=torch.long, device=x.device)
            layout = TokenLayout(rep(g), rep(valid), rep(content), rep(target & content))
        return x, mask, layout

    def _call(self, templates: list[int], with_layout: bool) -> TextCall:
        cs = self.classes
        ctx = self._text_prompt_list()  # [K,n,D] per layer
        llm = self.llm(cs.knowledge, templates)  # [K·C,P,D] per layer
        x, mask, layout = self._sequence(cs, ctx[0], llm[0], with_layout)
        pool = torch.full((x.shape[0],), x.shape[1] - 1, dtype=torch.long, device=x.device)
        c = cs.embedded.shape[0]
        spans = [(1, member_rows(ctx, c)), (cs.embedded.shape[1] - 1, llm)]
        return TextCall(x, mask, spans, pool, layout)

    def _features(self, templates: list[int], hook=None, streams=None) -> torch.Tensor:
        return self.text.run(self._call(templates, hook is not None), hook, streams=streams)

    def prompted_text_features(self, hook=None) -> torch.Tensor:
        return self._features([0] * self.members, hook)  # the first LLM template

    def text_call(self, hook=None, streams=None) -> TextCall:
        """One LLM template per member and call, drawn uniformly (DroPLe `decode_class`:
        torch.randint over --num_text_template, once per forward) from its CPU stream."""
        n = self.classes.knowledge.templates
        streams = streams if streams is not None else Streams.global_(self.members)
        return self._call(streams.randint(n), hook is not None)

    def template_text_features(self) -> torch.Tensor:
        """[T,K,C,E] normalised: every template's class features (evaluation)."""
        n, k = self.classes.knowledge.templates, self.members
        feats = [F.normalize(self._features([t] * k).float(), dim=-1) for t in range(n)]
        return torch.stack([f.view(k, -1, f.shape[-1]) for f in feats])

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Training: s·cos with one sampled template. Evaluation: log of the mean over templates
        of softmax(cos) at temperature 1 (DroPLe averages probabilities of unscaled cosines), so
        argmax and softmax of these logits are the release's prediction and probabilities."""
        if self.training:
            return super().member_logits(images)
        if self._eval_text is None:
            with torch.no_grad():
                self._eval_text = self.template_text_features()
        f = F.normalize(self.image_features(images, shared=True).float(), dim=-1)
        f = f.view(self.members, -1, f.shape[-1])
        with torch.autocast(f.device.type, enabled=False):
            cos = torch.einsum("kbe,tkce->tkbc", f, self._eval_text)
            return cos.softmax(dim=-1).mean(0).log()
