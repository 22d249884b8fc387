"""`PromptedCLIP`: frozen CLIP + learnable prompts, with DPL's pieces as switchable plug-ins.

Every method is this module (or a short subclass) built from a `MethodConfig`. The harness sees one
interface: `set_classes`, `logits`, `losses` (named, weighted terms; the total is their sum),
`trainable_state` / `load_trainable_state`, `param_groups`, `on_epoch_end`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import weakref
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from dpl.backbone import load_clip
from dpl.config import MethodConfig
from dpl.encoders import TextCall, TextEncoder, VisionEncoder
from dpl.fused import fused_losses
from dpl.layers import resolve_depth, resolve_layers
from dpl.lora import AttentionLoRA
from dpl.losses import loss_terms
from dpl.mag import MAGBridge
from dpl.prompts import CoupledPrompts, DeepPrompts
from dpl.templates import RAW_MEAN_SETS, template_set
from dpl.token_dropout import IWTDHook

log = logging.getLogger(__name__)
# A per-process cache: frozen text features per frozen CLIP object (PromptedCLIP._frozen_text).
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


class PromptedCLIP(nn.Module):
    def __init__(self, cfg: MethodConfig, clip: open_clip.CLIP | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = clip if clip is not None else load_clip(cfg.backbone)
        self.tokenizer = open_clip.get_tokenizer(cfg.backbone.model)
        n_vis = len(self.clip.visual.transformer.resblocks)
        n_text = len(self.clip.transformer.resblocks)
        self.text = TextEncoder(self.clip, self._lora("text", self.clip.transformer.width, n_text))
        self.vision = VisionEncoder(
            self.clip.visual, self._lora("vision", self.clip.visual.transformer.width, n_vis)
        )

        pc = cfg.prompts
        self.depth_text = resolve_depth(pc.depth_text, n_text) if pc.n_ctx_text else 0
        self.depth_vision = resolve_depth(pc.depth_vision, n_vis) if pc.n_ctx_vision else 0
        self.prompt_prefix, first = self._context_words(pc.n_ctx_text, pc.ctx_init)
        self.text_prompts = (
            DeepPrompts(
                pc.n_ctx_text, self.text.width, self.depth_text, first, pc.init_std, pc.init
            )
            if self.depth_text
            else None
        )
        self.vision_prompts: nn.Module | None = None
        if self.depth_vision and pc.coupling == "maple":
            if pc.n_ctx_vision != pc.n_ctx_text or self.depth_vision > self.depth_text:
                raise ValueError(
                    "prompts.coupling=maple needs n_ctx_vision == n_ctx_text and "
                    "depth_vision <= depth_text"
                )
            self.vision_prompts = CoupledPrompts(
                self.text.width, self.vision.width, self.depth_vision
            )
        elif self.depth_vision:
            # The releases that draw U(±1/√fan_in) draw all visual prompts as one
            # [depth, n, width] tensor: fan_in = n·width.
            self.vision_prompts = DeepPrompts(
                pc.n_ctx_vision, self.vision.width, self.depth_vision, None, pc.init_std,
                pc.init, pc.n_ctx_vision * self.vision.width,
            )  # fmt: skip

        if cfg.teacher.text != "template" and not hasattr(self, "_teacher_text"):
            raise ValueError(
                f"teacher.text={cfg.teacher.text!r} needs the LLM's descriptions: a method with "
                "the LLM prompt source (llamp, dpl-release)"
            )
        iw = cfg.iwtd
        self.iwtd_layers = {
            "text": resolve_depth(iw.text_layers, n_text)
            if iw.text_layers is not None
            else self.depth_text,
            "vision": resolve_depth(iw.vision_layers, n_vis)
            if iw.vision_layers is not None
            else self.depth_vision,
        }
        if not iw.text:
            self.iwtd_layers["text"] = 0
        if not iw.vision:
            self.iwtd_layers["vision"] = 0
        self.mag_layers = min(self.iwtd_layers["text"], self.iwtd_layers["vision"])
        if cfg.mag.enabled and self.mag_layers == 0:
            raise ValueError("mag.enabled needs IWTD layers in both encoders (text and vision)")
        needs_bridge = cfg.mag.enabled or (iw.enabled and iw.needs_cross)
        self.mag = MAGBridge(self.vision.width, self.text.width, cfg.mag) if needs_bridge else None

        ls = cfg.logit_scale
        self.logit_scale_log = (
            nn.Parameter(torch.tensor(ls.init_log, device=self.clip.logit_scale.device))
            if ls.learnable
            else None
        )

        self._classes: dict[tuple, ClassSet] = {}
        self._current: tuple | None = None
        self._eval_text: torch.Tensor | None = None
        self._frozen_images: dict[str, torch.Tensor] = {}
        self._gpa_sum: dict[str, torch.Tensor] = {}

    # --- construction helpers ---------------------------------------------------------------

    def _lora(self, encoder: str, width: int, layers: int) -> dict[int, AttentionLoRA]:
        lc = self.cfg.lora
        if lc.rank <= 0 or encoder not in lc.encoders:
            return {}
        return {
            i: AttentionLoRA(width, lc.rank, lc.alpha, lc.dropout, lc.targets, lc.scaling)
            for i in resolve_layers(lc.layers, layers)
        }

    def _context_words(self, n_ctx: int, ctx_init: str) -> tuple[str, torch.Tensor | None]:
        """The words before the class name, and layer-0 context initialised from them.

        With ctx_init of at least n_ctx tokens the prompt reads "<ctx_init> <name>." and its first
        n_ctx tokens are learnable (CoOp, MaPLe); otherwise n_ctx placeholders, random init."""
        if n_ctx == 0:
            return ctx_init, None
        if ctx_init:
            ids = self.tokenizer([ctx_init])[0].to(self.clip.token_embedding.weight.device)
            n_words = int(ids.argmax()) - 1  # tokens between SOT and EOT
            if n_words >= n_ctx:
                with torch.no_grad():
                    emb = self.clip.token_embedding(ids[None])[0, 1 : 1 + n_ctx]
                return ctx_init, emb
        return " ".join(["X"] * n_ctx), None

    # --- classes and cached text --------------------------------------------------------------

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

    def _apply(self, fn, recurse=True):  # .to()/.cuda()/.half(): cached tensors follow
        out = super()._apply(fn, recurse)
        self._classes = {
            k: dataclasses.replace(
                c, embedded=fn(c.embedded), eot=fn(c.eot), frozen_text=fn(c.frozen_text)
            )
            for k, c in self._classes.items()
        }
        self._frozen_images.clear()
        self._eval_text = None
        return out

    def train(self, mode: bool = True):
        self._eval_text = None
        out = super().train(mode)
        self.clip.eval()  # frozen: never in training mode (no dropout in the towers)
        return out

    # --- forward pieces -----------------------------------------------------------------------

    @property
    def logit_scale(self) -> torch.Tensor:
        if self.logit_scale_log is not None:
            # DroPLe clamps the parameter's value in place before each forward, then takes exp
            # with its full gradient (a clamp in the graph would freeze it at the bound).
            with torch.no_grad():
                self.logit_scale_log.clamp_(0.0, self.cfg.logit_scale.max_log)
            return self.logit_scale_log.exp()
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def _text_prompt_list(self) -> list[torch.Tensor]:
        return self.text_prompts() if self.text_prompts is not None else []

    def _vision_prompt_list(self, text_prompts: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.vision_prompts is None:
            return []
        if isinstance(self.vision_prompts, CoupledPrompts):
            return self.vision_prompts(text_prompts[: self.depth_vision])
        return self.vision_prompts()

    def text_call(self, hook: IWTDHook | None = None) -> TextCall:
        """The text tower's pass of `text_features(hook)`, built but not run (a fused step runs
        the passes of several runs at once, dpl/fused.py)."""
        cs = self.classes
        if cs.with_positions:  # TextEncoder.call adds them: they would count twice
            raise TypeError(f"{type(self).__name__}: its class set has positions added already")
        return self.text.call(cs.embedded, cs.eot, self._text_prompt_list(), 1, hook is not None)

    def text_features(self, hook: IWTDHook | None = None) -> torch.Tensor:
        """Learnable-branch class text features t^d [C,E] (not normalised)."""
        return self.text.run(self.text_call(hook), hook)

    def prompted_text_features(self, hook=None) -> torch.Tensor:
        """The prompted text tower over the current class list, deterministically (analyses call
        it with their own hook; zero-shot CLIP's text_features is a frozen template mean)."""
        return PromptedCLIP.text_features(self, hook)

    def vision_prompt_list(self) -> list[torch.Tensor]:
        """The vision tower's deep prompts per layer ([n,D] each)."""
        return self._vision_prompt_list(self._text_prompt_list())

    def image_features(self, images: torch.Tensor, hook: IWTDHook | None = None) -> torch.Tensor:
        """Learnable-branch image features f^d [B,E] (not normalised)."""
        return self.vision(images, self.vision_prompt_list(), hook)

    def needs_frozen_images(self) -> bool:
        w = self.cfg.loss
        return bool(w.image_l1 or w.kl or self.cfg.rer.enabled)

    def frozen_view(self, batch: dict) -> torch.Tensor:
        """The images the frozen branch sees: the clean view, or the learnable branch's."""
        images = batch["image"]
        return batch.get("clean", images) if self.cfg.frozen_view == "clean" else images

    @torch.no_grad()
    def frozen_image_features(
        self, images: torch.Tensor, keys: list[str] | None = None
    ) -> torch.Tensor:
        """f^o [B,E] normalised: the image tower without prompts or hooks, and without LoRA unless
        teacher.adapters is "release" (then with the current LoRA, its dropout active in training,
        as the releases run their teacher). Cached per sample key when it is a fixed function of
        the image: the original tower on the clean view."""
        adapted = self.cfg.teacher.adapters == "release"
        cacheable = (
            keys is not None
            and not adapted
            and self.cfg.cache_frozen_image_features
            and (self.cfg.frozen_view == "clean")
        )
        if not cacheable:
            return F.normalize(self.vision(images, adapters=adapted).float(), dim=-1)
        missing = [i for i, k in enumerate(keys) if k not in self._frozen_images]
        if missing:
            feats = F.normalize(self.vision(images[missing], adapters=False).float(), dim=-1)
            for i, f in zip(missing, feats):
                self._frozen_images[keys[i]] = f
        return torch.stack([self._frozen_images[k] for k in keys])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B,C] for the current class list, in fp32 (features may be bf16: an
        argmax over bf16 logits ties and flips classes). In eval, text features are computed once
        per class list and reused across batches."""
        if self.training:
            t = F.normalize(self.text_features().float(), dim=-1)
        else:
            if self._eval_text is None:
                with torch.no_grad():
                    self._eval_text = F.normalize(self.text_features().float(), dim=-1)
            t = self._eval_text
        f = F.normalize(self.image_features(images).float(), dim=-1)
        with torch.autocast(f.device.type, enabled=False):  # the matmul in fp32 under autocast
            return self.logit_scale.float() * f @ t.T

    forward = logits

    # --- training -----------------------------------------------------------------------------

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def _hook(self, generator: torch.Generator | None) -> IWTDHook | None:
        if not (self.cfg.iwtd.enabled or self.cfg.mag.enabled):
            return None
        return IWTDHook(
            self.cfg.iwtd,
            self.iwtd_layers,
            self.mag,
            self.mag_layers if self.cfg.mag.enabled else 0,
            generator,
        )

    def losses(
        self,
        batch: dict,
        epoch: int = 0,
        epochs: int = 1,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named, weighted loss terms of one training step; the total is their sum
        (dpl/losses.py).

        batch: image [B,3,H,W], label [B]; clean [B,3,H,W] and key (list) when the frozen branch
        sees the clean view."""
        hook = self._hook(generator)
        t_d = self.text_features(hook)  # [C,E]
        f_d = self.image_features(batch["image"], hook)  # [B,E]
        f_o = None
        if self.needs_frozen_images():
            f_o = self.frozen_image_features(self.frozen_view(batch), batch.get("key"))
        return loss_terms(self, batch, t_d, f_d, f_o, hook, epoch, epochs)

    @classmethod
    def fused_losses(cls, runs, batches, epoch, epochs) -> list[dict[str, torch.Tensor] | None]:
        """The losses of several runs of this method in one pass through the frozen towers
        (dpl/fused.py); `runs` is a FusedRuns of models of this class."""
        return fused_losses(runs, batches, epoch, epochs)

    # --- state --------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes: prompts, LoRA, MAG, meta-nets (+ GPA running sums)."""
        state = {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}
        state.update({f"_gpa.{n}": t.clone() for n, t in self._gpa_sum.items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        gpa = {k[len("_gpa.") :]: v for k, v in state.items() if k.startswith("_gpa.")}
        own = {k: v for k, v in state.items() if not k.startswith("_gpa.")}
        if set(own) != set(params):
            missing, extra = sorted(set(params) - set(own)), sorted(set(own) - set(params))
            raise ValueError(
                f"trainable state does not fit {self.cfg.method}: missing {missing[:5]}, "
                f"unexpected {extra[:5]}"
            )
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(own[n])
        self._gpa_sum = {n: t.to(params[n].device) for n, t in gpa.items()}
        self._eval_text = None

    def param_groups(self) -> list[dict]:
        lora, rest = [], []
        for n, p in self.named_parameters():
            if p.requires_grad:
                (lora if n.startswith(("vision.lora.", "text.lora.")) else rest).append(p)
        groups = [{"params": rest, "lr": self.cfg.optim.lr, "name": "prompts"}]
        if lora:
            groups.append({"params": lora, "lr": self.cfg.optim.lr_lora, "name": "lora"})
        # CLIP-LoRA trains LoRA alone: no empty prompt group (whose lr the epochs table would show)
        return [g for g in groups if g["params"]]

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """PromptSRC's Gaussian prompt aggregation (GPA): accumulate this epoch's prompts with a
        Gaussian weight over epochs; after the last epoch the prompts become the weighted mean."""
        g = self.cfg.gpa
        if not g.enabled:
            return
        weights = [math.exp(-0.5 * ((e - g.mean) / g.std) ** 2) for e in range(1, epochs + 1)]
        total = sum(weights)
        # Underflow for runs far shorter than the mean: put all weight on the last epoch.
        w = weights[epoch] / total if total > 0 else float(epoch == epochs - 1)
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        for n, p in params.items():
            acc = self._gpa_sum.get(n)
            self._gpa_sum[n] = (0 if acc is None else acc) + w * p.detach().float()
        if epoch == epochs - 1:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self._gpa_sum[n].to(p.dtype))
            self._gpa_sum = {}
            self._eval_text = None
