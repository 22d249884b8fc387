"""Fused runs: K runs of one method, trained as one batched model over their shared frozen CLIP.

Runs that differ only in seed or in values that leave shapes alone (learning rates, loss weights,
IWTD rates, ...) send one pass through each frozen tower per step: the text tower over the K runs'
class sequences side by side ([K·C, L, D]), the image tower over their batches side by side
([ΣB, S, D]). Every frozen matrix multiply runs once over all of them; each run's sequences carry
its own deep prompts (per-sample prompt rows), its own LoRA update (`SegmentedLoRA`: the K low-rank
products batched) and its own IWTD / MAG hook (`SegmentedHook`: each run's token drops with its
own rates). The K losses are computed from each run's slice of the features by the same function
as a run trained alone (dpl/losses.py); their sum has one backward, and since the runs share no
trainable parameter, each run's gradient is its own.

Randomness is each run's own (`RunRNG`): a run's draws inside the forward (LoRA dropout, IWTD
selections and noise, LLaMP's template) come from its own torch generator states, in the order its
solo step makes them, so a fused run draws exactly what it would alone. The frozen branch's cached
image features are shared by sample key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from dpl.encoders import TextCall, TokenLayout
from dpl.losses import loss_terms

# The text tower runs on at most this many class sequences at once (whole runs per chunk): K
# runs of ImageNet's 1000 classes would otherwise hold K·1000 sequences' attention at once.
TEXT_CHUNK = 4096


class RunRNG:
    """One run's torch random streams: the CPU generator and, when it trains on a GPU, that
    device's. `active()` makes them the global ones for a block and keeps what the block drew."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device if device.type == "cuda" else None
        devices = [self.device] if self.device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # what seeding a solo run does (torch's part)
            self.cpu = torch.get_rng_state()
            self.cuda = torch.cuda.get_rng_state(self.device) if self.device is not None else None

    def state(self) -> dict[str, torch.Tensor | None]:
        """The streams as a checkpoint keeps them (a resumed run draws on where it stopped)."""
        return {"cpu": self.cpu.clone(), "cuda": None if self.cuda is None else self.cuda.clone()}

    def load(self, state: dict[str, torch.Tensor | None]) -> None:
        self.cpu = state["cpu"]
        if self.device is not None and state.get("cuda") is not None:
            self.cuda = state["cuda"]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved_cpu = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state(self.device) if self.device is not None else None
        torch.set_rng_state(self.cpu)
        if self.device is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            torch.set_rng_state(saved_cpu)
            if self.device is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)


class SegmentedLoRA:
    """The LoRA of one layer of K runs, over the K runs' rows side by side. Each run's dropout is
    drawn with its own RNG; the low-rank products of equal-sized segments run as one batched
    matrix multiply."""

    def __init__(self, loras: Sequence[Any], rngs: Sequence[RunRNG], counts: Sequence[int]):
        self.loras, self.rngs, self.counts = list(loras), list(rngs), list(counts)
        first = self.loras[0]
        self.targets, self.scale, self.training = first.targets, first.scale, first.training

    def _dropped(self, h: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for lora, rng, part in zip(self.loras, self.rngs, h.split(self.counts)):
            with rng.active():
                out.append(lora.dropout(part))
        return out

    def _product(self, parts: list[torch.Tensor], i: int) -> torch.Tensor:
        a = torch.stack([lora.a[i] for lora in self.loras])  # [K,r,D]
        b = torch.stack([lora.b[i] for lora in self.loras])  # [K,D,r]
        if len(set(self.counts)) == 1:  # one batched product for all runs
            x = torch.stack(parts)  # [K,n,S,D]
            K, n, S, D = x.shape
            y = torch.bmm(torch.bmm(x.reshape(K, n * S, D), a.transpose(1, 2)), b.transpose(1, 2))
            return (y * self.scale).reshape(K * n, S, -1)
        return torch.cat([(p @ a[k].T) @ b[k].T * self.scale for k, p in enumerate(parts)])

    def delta(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        # each projection's own dropout, in q, k, v order (AttentionLoRA.delta)
        return {
            t: self._product(self._dropped(h), i) for i, t in enumerate(self.targets) if t != "o"
        }

    def delta_out(self, out: torch.Tensor) -> torch.Tensor | None:
        if "o" not in self.targets:
            return None
        return self._product(self._dropped(out), self.targets.index("o"))


def _slice_layout(layout: TokenLayout | None, part: slice) -> TokenLayout | None:
    if layout is None:
        return None
    return TokenLayout(
        layout.global_index[part], layout.valid[part], layout.content[part], layout.target[part]
    )


class SegmentedHook:
    """The IWTD / MAG hooks of K runs over their rows side by side: each run's hook acts on its
    own rows, drawing with its own RNG."""

    def __init__(self, hooks: Sequence[Any], rngs: Sequence[RunRNG], counts: Sequence[int]):
        self.hooks, self.rngs = list(hooks), list(rngs)
        starts = [sum(counts[:k]) for k in range(len(counts))]
        self.parts = [slice(s, s + n) for s, n in zip(starts, counts)]

    def wants_attention(self, modality: str, layer: int) -> bool:
        return any(h is not None and h.wants_attention(modality, layer) for h in self.hooks)

    def __call__(self, x, attn, modality, layer, layout) -> torch.Tensor:
        out = []
        for hook, rng, part in zip(self.hooks, self.rngs, self.parts):
            if hook is None:
                out.append(x[part])
                continue
            a = attn[part] if attn is not None else None
            draws = hook._drops(modality, layer)
            with rng.active() if draws else contextlib.nullcontext():
                out.append(hook(x[part], a, modality, layer, _slice_layout(layout, part)))
        return torch.cat(out)


def per_row(prompts: Sequence[list[torch.Tensor]], counts: Sequence[int]) -> list[torch.Tensor]:
    """K runs' per-layer prompts ([n,D] or [rows,n,D] each) as one per-row list ([Σrows,n,D])."""
    layers = len(prompts[0])
    if any(len(p) != layers for p in prompts):
        raise ValueError("fused runs need the same prompt depth")
    return [
        torch.cat(
            [p[i].expand(c, -1, -1) if p[i].dim() == 2 else p[i] for p, c in zip(prompts, counts)]
        )
        for i in range(layers)
    ]


def concat_calls(calls: Sequence[TextCall]) -> TextCall:
    """K runs' text passes as one: sequences, masks, deep prompts, pooling and layouts side by
    side (the runs are of one method and one class list, so their shapes agree)."""
    counts = [c.x.shape[0] for c in calls]
    masks = [c.mask for c in calls]
    if all(m is None for m in masks):
        mask = None
    elif all(m is not None and m.dim() == 2 for m in masks):
        mask = masks[0]  # the causal mask of one tower
    else:
        mask = torch.cat(
            [m.expand(n, -1, -1) if m.dim() == 2 else m for m, n in zip(masks, counts)]
        )
    spans = []
    for j, (start, _) in enumerate(calls[0].spans):
        if any(c.spans[j][0] != start for c in calls):
            raise ValueError("fused runs need their prompts at the same positions")
        spans.append((start, per_row([c.spans[j][1] for c in calls], counts)))
    layout = None
    if calls[0].layout is not None:
        fields = ("global_index", "valid", "content", "target")
        layout = TokenLayout(*(torch.cat([getattr(c.layout, f) for c in calls]) for f in fields))
    return TextCall(
        torch.cat([c.x for c in calls]), mask, spans, torch.cat([c.pool for c in calls]), layout
    )


def segmented_lora(encoders: Sequence[Any], rngs, counts) -> dict[int, SegmentedLoRA]:
    """Per layer, the K runs' LoRA of one tower (empty: the tower has none)."""
    first = encoders[0].lora
    return {
        int(i): SegmentedLoRA([e.lora[i] for e in encoders], rngs, counts) for i in first.keys()
    }


def _chunks(n_runs: int, rows: int) -> list[list[int]]:
    per = max(1, TEXT_CHUNK // max(rows, 1))
    return [list(range(s, min(s + per, n_runs))) for s in range(0, n_runs, per)]


class FusedRuns:
    """K runs of one method on one frozen CLIP, stepped together (module docstring). Build each
    member as its solo run builds it (same seed, same init); `seeds` are the seeds of the RNG
    streams their solo steps draw from."""

    def __init__(self, members: Sequence[Any], seeds: Sequence[int], device: torch.device):
        if len({type(m) for m in members}) != 1 or len({id(m.clip) for m in members}) != 1:
            raise ValueError("fused runs need one method class on one shared frozen CLIP")
        self.members = list(members)
        self.rngs = [RunRNG(s, device) for s in seeds]
        cache: dict = {}  # the frozen branch's image features, by sample key, for every run
        for m in self.members:
            m._frozen_images = cache

    def losses(
        self, batches: Sequence[dict | None], epoch: int, epochs: Sequence[int]
    ) -> list[dict[str, torch.Tensor] | None]:
        """Each run's named loss terms for its batch (None: the run takes no step)."""
        return type(self.members[0]).fused_losses(self, batches, epoch, epochs)

    def active(self, batches: Sequence[dict | None]) -> list[int]:
        return [k for k, b in enumerate(batches) if b is not None]

    def frozen_images(self, ids: Sequence[int], batches: Sequence[dict]) -> list:
        """The frozen branch's image features of each run's batch, in one pass: over what the
        shared cache lacks, or (teacher.adapters "release") through each run's own LoRA."""
        members = [self.members[k] for k in ids]
        first = members[0]
        if not any(m.needs_frozen_images() for m in members):
            return [None] * len(batches)
        counts = [len(b["label"]) for b in batches]
        views = torch.cat([first.frozen_view(b) for b in batches])
        if first.cfg.teacher.adapters == "release":
            lora = segmented_lora([m.vision for m in members], [self.rngs[k] for k in ids], counts)
            with torch.no_grad():
                feats = first.vision(views, lora=lora).float()
            return list(torch.nn.functional.normalize(feats, dim=-1).split(counts))
        keys = [k for b in batches for k in b["key"]] if all("key" in b for b in batches) else None
        return list(first.frozen_image_features(views, keys).split(counts))


def fused_losses(runs: FusedRuns, batches, epoch: int, epochs) -> list:
    """The fused step of the prompted methods (PromptedCLIP and LLaMP): the text pass of every
    run, then the image pass, then each run's terms (module docstring)."""
    ids = runs.active(batches)
    members = [runs.members[k] for k in ids]
    rngs = [runs.rngs[k] for k in ids]
    mine = [batches[k] for k in ids]
    hooks, calls = [], []
    for m, rng in zip(members, rngs):  # in each run's own order of draws: hook, template, ...
        with rng.active():
            hook = m._hook(None)
            hooks.append(hook)
            calls.append(m.text_call(hook))
    text = []
    for chunk in _chunks(len(members), calls[0].x.shape[0]):
        counts = [calls[k].x.shape[0] for k in chunk]
        hook = SegmentedHook([hooks[k] for k in chunk], [rngs[k] for k in chunk], counts)
        lora = segmented_lora([members[k].text for k in chunk], [rngs[k] for k in chunk], counts)
        call = concat_calls([calls[k] for k in chunk])
        text += members[0].text.run(call, hook if any(hooks) else None, lora=lora).split(counts)
    counts = [len(b["label"]) for b in mine]
    images = torch.cat([b["image"] for b in mine])
    prompts = []
    if members[0].vision_prompts is not None:
        prompts = per_row([m.vision_prompt_list() for m in members], counts)
    hook = SegmentedHook(hooks, rngs, counts) if any(hooks) else None
    lora = segmented_lora([m.vision for m in members], rngs, counts)
    image = members[0].vision(images, prompts, hook, lora=lora).split(counts)
    frozen = runs.frozen_images(ids, mine)
    out: list = [None] * len(batches)
    for j, k in enumerate(ids):
        out[k] = loss_terms(
            members[j], mine[j], text[j], image[j], frozen[j], hooks[j], epoch, epochs[k]
        )
    return out
