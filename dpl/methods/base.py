"""`PromptedCLIP`: frozen CLIP + learnable prompts, with DPL's pieces as switchable plug-ins.

Every method is this module (or a short subclass) built from a `MethodConfig`, for K members at
once (dpl/members.py): a run trained alone is K = 1, a fused group of K runs that differ in seed
or shape-neutral values is one model whose every trainable tensor has a member axis. The harness
sees one interface: `set_classes`, `member_losses` (a [K, terms] tensor), `member_logits`, each
member's state (dpl/methods/state.py), `param_groups`, `on_epoch_end`; and for one member the
familiar `losses` (named terms) and `logits`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from dpl.backbone import load_clip
from dpl.config import MethodConfig
from dpl.encoders import TextCall, TextEncoder, VisionEncoder
from dpl.layers import resolve_depth, resolve_layers
from dpl.lora import AttentionLoRA
from dpl.losses import Terms, loss_terms
from dpl.mag import MAGBridge
from dpl.members import Gen, Streams, member_parameter
from dpl.methods.classes import ClassLists, ClassSet
from dpl.methods.state import MemberState
from dpl.prompts import CoupledPrompts, DeepPrompts
from dpl.token_dropout import IWTDHook

log = logging.getLogger(__name__)


def member_rows(prompts: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """Per-layer member prompts [K,n,D] as the encoders take them: [n,D] for one member (shared
    by its rows), else [K·rows,n,D] (each member's rows with its own)."""
    if not prompts or prompts[0].shape[0] == 1:
        return [p[0] for p in prompts]
    return [p[:, None].expand(-1, rows, -1, -1).flatten(0, 1) for p in prompts]


def _overrides(model: nn.Module, name: str) -> bool:
    """Whether the model's class overrides `name` of PromptedCLIP's one-member API (a method
    written for one member: it keeps working alone, and cannot train fused)."""
    return getattr(type(model), name) is not getattr(PromptedCLIP, name)


class PromptedCLIP(ClassLists, MemberState, nn.Module):
    def __init__(
        self,
        cfg: MethodConfig | Sequence[MethodConfig],
        clip: open_clip.CLIP | None = None,
        gens: Sequence[Gen] | None = None,
    ) -> None:
        """cfg: the members' configs (one: a run alone), equal in everything that fixes a shape;
        gens: each member's generator for its initial values (None: the global stream, as a run
        seeded with torch.manual_seed draws)."""
        super().__init__()
        self.cfgs = (cfg,) if isinstance(cfg, MethodConfig) else tuple(cfg)
        self.cfg = cfg = self.cfgs[0]
        gens = tuple(gens) if gens is not None else (None,) * len(self.cfgs)
        if len(gens) != len(self.cfgs):
            raise ValueError(f"{len(self.cfgs)} members need {len(self.cfgs)} generators")
        self.clip = clip if clip is not None else load_clip(cfg.backbone)
        self.tokenizer = open_clip.get_tokenizer(cfg.backbone.model)
        n_vis = len(self.clip.visual.transformer.resblocks)
        n_text = len(self.clip.transformer.resblocks)
        text_lora = self._lora("text", self.clip.transformer.width, n_text, gens)
        self.text = TextEncoder(self.clip, text_lora)
        vision_lora = self._lora("vision", self.clip.visual.transformer.width, n_vis, gens)
        self.vision = VisionEncoder(self.clip.visual, vision_lora)

        pc = cfg.prompts
        self.depth_text = resolve_depth(pc.depth_text, n_text) if pc.n_ctx_text else 0
        self.depth_vision = resolve_depth(pc.depth_vision, n_vis) if pc.n_ctx_vision else 0
        self.prompt_prefix, first = self._context_words(pc.n_ctx_text, pc.ctx_init)
        self.text_prompts = (
            DeepPrompts(
                pc.n_ctx_text, self.text.width, self.depth_text, first, pc.init_std, pc.init,
                gens=gens,
            )
            if self.depth_text
            else None
        )  # fmt: skip
        self.vision_prompts: nn.Module | None = None
        if self.depth_vision and pc.coupling == "maple":
            if pc.n_ctx_vision != pc.n_ctx_text or self.depth_vision > self.depth_text:
                raise ValueError(
                    "prompts.coupling=maple needs n_ctx_vision == n_ctx_text and "
                    "depth_vision <= depth_text"
                )
            self.vision_prompts = CoupledPrompts(
                self.text.width, self.vision.width, self.depth_vision, gens
            )
        elif self.depth_vision:
            # The releases that draw U(±1/√fan_in) draw all visual prompts as one
            # [depth, n, width] tensor: fan_in = n·width.
            self.vision_prompts = DeepPrompts(
                pc.n_ctx_vision, self.vision.width, self.depth_vision, None, pc.init_std,
                pc.init, pc.n_ctx_vision * self.vision.width, gens,
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
        self.mag = (
            MAGBridge(self.vision.width, self.text.width, cfg.mag, gens) if needs_bridge else None
        )

        ls = cfg.logit_scale
        self.logit_scale_log = (
            member_parameter(
                torch.tensor(
                    [c.logit_scale.init_log for c in self.cfgs], device=self.clip.logit_scale.device
                )
            )
            if ls.learnable
            else None
        )

        self._classes: dict[tuple, ClassSet] = {}
        self._current: tuple | None = None
        self._eval_text: torch.Tensor | None = None
        self._frozen_images: dict[str, torch.Tensor] = {}
        self._gpa_sum: dict[str, torch.Tensor] = {}

    @property
    def members(self) -> int:
        return len(self.cfgs)

    # --- construction helpers ---------------------------------------------------------------

    def _lora(self, encoder: str, width: int, layers: int, gens) -> dict[int, AttentionLoRA]:
        lc = self.cfg.lora
        if lc.rank <= 0 or encoder not in lc.encoders:
            return {}
        return {
            i: AttentionLoRA(width, lc.rank, lc.alpha, lc.dropout, lc.targets, lc.scaling, gens)
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
        """Each member's logit scale [K]."""
        if self.logit_scale_log is not None:
            # DroPLe clamps the parameter's value in place before each forward, then takes exp
            # with its full gradient (a clamp in the graph would freeze it at the bound).
            with torch.no_grad():
                self.logit_scale_log.clamp_(0.0, self.cfg.logit_scale.max_log)
            return self.logit_scale_log.exp()
        return self.clip.logit_scale.exp().clamp(max=100.0).expand(self.members)

    def _text_prompt_list(self) -> list[torch.Tensor]:
        """Per layer [K,n,D]."""
        return self.text_prompts() if self.text_prompts is not None else []

    def _vision_prompt_list(self, text_prompts: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.vision_prompts is None:
            return []
        if isinstance(self.vision_prompts, CoupledPrompts):
            return self.vision_prompts(text_prompts[: self.depth_vision])
        return self.vision_prompts()

    def text_call(self, hook: IWTDHook | None = None, streams: Streams | None = None) -> TextCall:
        """The text tower's pass over the members' class sequences (member-major, K·C rows),
        built but not run."""
        cs = self.classes
        if cs.with_positions:  # TextEncoder.call adds them: they would count twice
            raise TypeError(f"{type(self).__name__}: its class set has positions added already")
        k, c = self.members, cs.embedded.shape[0]
        embedded = cs.embedded if k == 1 else cs.embedded.repeat(k, 1, 1)
        eot = cs.eot if k == 1 else cs.eot.repeat(k)
        prompts = member_rows(self._text_prompt_list(), c)
        return self.text.call(embedded, eot, prompts, 1, hook is not None)

    def text_features(
        self, hook: IWTDHook | None = None, streams: Streams | None = None
    ) -> torch.Tensor:
        """Learnable-branch class text features t^d [K·C,E] (not normalised)."""
        return self.text.run(self.text_call(hook, streams), hook, streams=streams)

    def prompted_text_features(self, hook=None) -> torch.Tensor:
        """The prompted text tower over the current class list, deterministically (analyses call
        it with their own hook; zero-shot CLIP's text_features is a frozen template mean)."""
        return PromptedCLIP.text_features(self, hook)

    def vision_prompt_list(self) -> list[torch.Tensor]:
        """The vision tower's deep prompts per layer ([K,n,D] each)."""
        return self._vision_prompt_list(self._text_prompt_list())

    def image_features(
        self,
        images: torch.Tensor,
        hook: IWTDHook | None = None,
        streams: Streams | None = None,
        shared: bool = False,
    ) -> torch.Tensor:
        """Learnable-branch image features f^d [K·B,E] (not normalised): images [K·B,3,H,W],
        each member's batch, or (`shared`) one batch [B,...] every member sees."""
        k = self.members if shared else 1
        rows = images.shape[0] * k // self.members
        prompts = member_rows(self.vision_prompt_list(), rows)
        return self.vision(images, prompts, hook, streams=streams, members=k)

    def needs_frozen_images(self) -> bool:
        return any(bool(c.loss.image_l1 or c.loss.kl or c.rer.enabled) for c in self.cfgs)

    def frozen_view(self, batch: dict) -> torch.Tensor:
        """The images the frozen branch sees: the clean view, or the learnable branch's."""
        images = batch["image"]
        return batch.get("clean", images) if self.cfg.frozen_view == "clean" else images

    @torch.no_grad()
    def frozen_image_features(
        self,
        images: torch.Tensor,
        keys: list[str] | None = None,
        streams: Streams | None = None,
    ) -> torch.Tensor:
        """f^o [K·B,E] normalised: the image tower without prompts or hooks, and without LoRA
        unless teacher.adapters is "release" (then with each member's current LoRA, its dropout
        active in training, as the releases run their teacher). Cached per sample key when it is
        a fixed function of the image: the original tower on the clean view."""
        adapted = self.cfg.teacher.adapters == "release"
        cacheable = (
            keys is not None
            and not adapted
            and self.cfg.cache_frozen_image_features
            and (self.cfg.frozen_view == "clean")
        )
        if not cacheable:
            feats = self.vision(images, adapters=adapted, streams=streams if adapted else None)
            return F.normalize(feats.float(), dim=-1)
        return self._cached_frozen_images(images, keys)

    # Eager even inside a compiled step: under mode="reduce-overhead" a tensor made in the graph
    # lives in the CUDA graph's pool and is overwritten by the next replay, so a cache filled
    # there would hand back another step's features (and PyTorch refuses to read them).
    @torch.compiler.disable
    @torch.no_grad()
    def _cached_frozen_images(self, images: torch.Tensor, keys: list[str]) -> torch.Tensor:
        missing = [i for i, k in enumerate(keys) if k not in self._frozen_images]
        if missing:
            feats = F.normalize(self.vision(images[missing], adapters=False).float(), dim=-1)
            for i, f in zip(missing, feats):
                self._frozen_images[keys[i]] = f
        return torch.stack([self._frozen_images[k] for k in keys])

    def eval_text(self) -> torch.Tensor:
        """The members' class text features for evaluation [K,C,E], normalised, once per class
        list."""
        if self._eval_text is None:
            with torch.no_grad():
                t = F.normalize(self.text_features().float(), dim=-1)
                self._eval_text = t.view(self.members, -1, t.shape[-1])
        return self._eval_text

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Every member's class logits [K,B,C] for one batch of images [B,...], in fp32
        (features may be bf16: an argmax over bf16 logits ties and flips classes)."""
        if self.members == 1 and _overrides(self, "logits"):  # a subclass of one member's API
            return self.logits(images)[None]
        return self._logits(images)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            t = F.normalize(self.text_features().float(), dim=-1)
            t = t.view(self.members, -1, t.shape[-1])
        else:
            t = self.eval_text()
        f = F.normalize(self.image_features(images, shared=True).float(), dim=-1)
        f = f.view(self.members, -1, f.shape[-1])
        scale = self.logit_scale.float()
        with torch.autocast(f.device.type, enabled=False):  # the matmul in fp32 under autocast
            if self.members == 1:
                return (scale[0] * f[0] @ t[0].T)[None]
            return scale.view(-1, 1, 1) * f @ t.transpose(1, 2)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B,C] of a run alone (one member)."""
        self._one("logits")
        if _overrides(self, "logits"):  # reached through super() from a subclass's own logits
            return self._logits(images)[0]
        return self.member_logits(images)[0]

    forward = logits

    # --- training -----------------------------------------------------------------------------

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def _hook(self, streams: Streams | None, labels: torch.Tensor) -> IWTDHook | None:
        if not (self.cfg.iwtd.enabled or self.cfg.mag.enabled):
            return None
        k = self.members
        c = self.classes.embedded.shape[0]
        # The MAG loss reads each sample's label class of the text side: only those rows.
        rows = (torch.arange(k, device=labels.device)[:, None] * c + labels.view(k, -1)).flatten()
        return IWTDHook(
            [m.iwtd for m in self.cfgs],
            self.iwtd_layers,
            self.mag,
            self.mag_layers if self.cfg.mag.enabled else 0,
            streams,
            {"text": rows},
        )

    def member_losses(
        self, batch: dict, epoch: int = 0, epochs: int = 1, streams: Streams | None = None
    ) -> Terms:
        """The members' named, weighted loss terms of one training step (dpl/losses.py).

        batch: member-major rows: image [K·B,3,H,W], label [K·B]; clean [K·B,3,H,W] and key
        (list) when the frozen branch sees the clean view. streams: the members' draws."""
        streams = streams if streams is not None else Streams.global_(self.members)
        if self.members == 1 and _overrides(self, "losses"):  # a subclass of one member's API
            terms = self.losses(batch, epoch, epochs, streams.on(batch["label"].device)[0])
            names = tuple(terms)
            return Terms(names, torch.stack([terms[n] for n in names])[None], [names])
        return self._member_losses(batch, epoch, epochs, streams)

    def _member_losses(self, batch: dict, epoch: int, epochs: int, streams: Streams) -> Terms:
        hook = self._hook(streams, batch["label"])
        t_d = self.text_features(hook, streams)  # [K·C,E]
        f_d = self.image_features(batch["image"], hook, streams)  # [K·B,E]
        f_o = None
        if self.needs_frozen_images():
            f_o = self.frozen_image_features(self.frozen_view(batch), batch.get("key"), streams)
        return loss_terms(self, batch, t_d, f_d, f_o, hook, epoch, epochs)

    def losses(
        self,
        batch: dict,
        epoch: int = 0,
        epochs: int = 1,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """A run alone's named, weighted loss terms (the total is their sum); its draws from
        `generator` (None: torch's global stream)."""
        self._one("losses")
        streams = Streams([generator])
        if _overrides(self, "losses"):  # reached through super() from a subclass's own losses
            return self._member_losses(batch, epoch, epochs, streams).member(0)
        return self.member_losses(batch, epoch, epochs, streams).member(0)

    def param_groups(self) -> list[dict]:
        lora, rest = [], []
        for n, p in self.named_parameters():
            if p.requires_grad:
                (lora if n.startswith(("vision.lora.", "text.lora.")) else rest).append(p)
        groups = [{"params": rest, "name": "prompts"}, {"params": lora, "name": "lora"}]
        # CLIP-LoRA trains LoRA alone: no empty prompt group (whose lr the epochs table would show)
        return [g for g in groups if g["params"]]
