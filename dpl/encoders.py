"""Prompted text and vision forwards over open_clip's own blocks.

The loops below reproduce `CLIP.encode_image` / `CLIP.encode_text` exactly when no prompts, LoRA or
hooks are given (tests check this). They add: deep prompts (docs/dpl.md §2), LoRA on q/v, and a
per-layer hook where IWTD and MAG act. Per-head attention maps are computed only in layers whose hook
asks for them; every other layer, and every layer in eval, keeps open_clip's fused attention.

Rows are member-major (dpl/members.py): a forward of K members runs their K·N sequences through
each frozen block at once; each member's rows carry its own prompts, LoRA and hook values.

Text runs on sequences truncated to the longest [EOT] + 1 of the class list: the mask is causal, so
later (padding) positions cannot change any token up to [EOT], and dropping them saves ~4x compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from dpl.lora import AttentionLoRA
from dpl.members import Streams, by_member, rows_of

Modality = str  # "vision" | "text"
Span = tuple[int, list[torch.Tensor]]  # (first position, per-layer prompts placed there)


@dataclass
class TokenLayout:
    """Which positions of a sequence play which role (docs/dpl.md §3), for one forward."""

    global_index: torch.Tensor  # [B] position of [CLS] (vision) or [EOT] (text)
    valid: torch.Tensor  # [B,S] bool: real tokens (text: up to and including [EOT])
    content: torch.Tensor  # [B,S] bool: valid and not the global token
    target: torch.Tensor  # [B,S] bool: the tokens IWTD may drop


@dataclass
class TextCall:
    """One pass of the text tower, built but not run: sequences that are already embedded
    (positions added, layer-0 prompts in place), their attention mask, the deep prompts placed at
    later layers, where to pool, and the token roles for a hook. Its rows are the members' class
    sequences, member-major (dpl/members.py)."""

    x: torch.Tensor  # [N,S,D]
    mask: torch.Tensor | None  # [S,S] shared, or [N,S,S] per sequence (additive)
    spans: list[Span]  # (first position, per-layer prompts [n,D] or [N,n,D])
    pool: torch.Tensor  # [N]
    layout: TokenLayout | None = None


class LayerHook(Protocol):
    """Acts on a layer's output inside the learnable branch (IWTD, MAG capture)."""

    def wants_attention(self, modality: Modality, layer: int) -> bool: ...

    def __call__(
        self,
        x: torch.Tensor,
        attn: torch.Tensor | None,
        modality: Modality,
        layer: int,
        layout: TokenLayout,
    ) -> torch.Tensor: ...


def _attention(
    mha: nn.MultiheadAttention,
    h: torch.Tensor,
    attn_mask: torch.Tensor | None,
    lora: AttentionLoRA | None,
    need_weights: bool,
    streams: Streams | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention with the block's weights, optionally LoRA'd (each member's rows with its
    own) and returning per-head maps."""
    B, S, D = h.shape
    H = mha.num_heads
    merged = lora is not None and not lora.training
    if merged:
        qkv = _member_linear(h, lora.merged(mha.in_proj_weight), mha.in_proj_bias)
    else:
        qkv = F.linear(h, mha.in_proj_weight, mha.in_proj_bias)  # [B,S,3D]
    q, k, v = qkv.chunk(3, dim=-1)
    if lora is not None and lora.training:
        d = lora.delta(h, streams)
        q, k, v = q + d.get("q", 0), k + d.get("k", 0), v + d.get("v", 0)
    q, k, v = (t.reshape(B, S, H, D // H).transpose(1, 2) for t in (q, k, v))  # [B,H,S,hd]
    mask = None
    if attn_mask is not None:  # [S,S] shared or [B,S,S] per sequence -> broadcast over heads
        mask = (attn_mask[:, None] if attn_mask.dim() == 3 else attn_mask).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    attn = None
    if need_weights:
        # The maps only feed importance scores (a sampling decision, no gradient): computed
        # apart under no_grad, so the output keeps the fused kernel and no [B,H,S,S] backward.
        with torch.no_grad():
            scores = (q * (D // H) ** -0.5) @ k.transpose(-1, -2)  # [B,H,S,S]
            if mask is not None:
                scores = scores + mask
            attn = scores.float().softmax(dim=-1)
    out = out.transpose(1, 2).reshape(B, S, D)
    if merged:
        return _member_linear(out, lora.merged_out(mha.out_proj.weight), mha.out_proj.bias), attn
    proj = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
    if lora is not None and (d_o := lora.delta_out(out, streams)) is not None:
        proj = proj + d_o
    return proj, attn


def _member_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [K·N,S,Din] through each member's own weight w [K,Dout,Din] (and the shared bias)."""
    if w.shape[0] == 1:
        return F.linear(x, w[0], bias)
    xk = by_member(x, w.shape[0])  # [K,N,S,Din]
    flat = xk.reshape(w.shape[0], -1, x.shape[-1])
    y = torch.bmm(flat, w.transpose(1, 2).to(x.dtype))
    if bias is not None:
        y = y + bias.to(y.dtype)
    return rows_of(y.reshape(*xk.shape[:-1], -1))


def block_forward(
    blk: ResidualAttentionBlock,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    lora: AttentionLoRA | None = None,
    need_weights: bool = False,
    streams: Streams | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One open_clip residual block; x [B,S,D] batch-first. Returns (x, per-head attention or None)."""
    h = blk.ln_1(x)
    per_sequence = attn_mask is not None and attn_mask.dim() == 3
    if lora is None and not need_weights and not per_sequence:
        a, attn = blk.attention(q_x=h, attn_mask=attn_mask), None  # open_clip's fused path
    else:
        a, attn = _attention(blk.attn, h, attn_mask, lora, need_weights, streams)
    x = x + blk.ls_1(a)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, attn


def _check_blocks(blocks: nn.ModuleList, batch_first: bool) -> None:
    if not batch_first or not all(type(b) is ResidualAttentionBlock for b in blocks):
        raise ValueError(
            "prompted encoders need open_clip's batch-first ResidualAttentionBlock towers "
            "(standard CLIP ViT configs); this model uses another block type"
        )


def _place(x: torch.Tensor, start: int, p: torch.Tensor) -> torch.Tensor:
    """x with positions start..start+n replaced by p ([n,D] shared or [B,n,D] per sample)."""
    p = p.expand(x.shape[0], -1, -1) if p.dim() == 2 else p
    return torch.cat([x[:, :start], p.to(x.dtype), x[:, start + p.shape[1] :]], 1)


def _run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None,
    spans: list[Span],
    lora: dict[int, AttentionLoRA],
    hook: LayerHook | None,
    modality: Modality,
    layout: TokenLayout | None,
    streams: Streams | None = None,
) -> torch.Tensor:
    """Blocks with deep prompts replaced at layers 1..len(prompts)-1 of each span (layer 0's are
    already in x)."""
    for i, blk in enumerate(blocks):
        for start, prompts in spans:
            if 0 < i < len(prompts):
                x = _place(x, start, prompts[i])
        need = hook is not None and hook.wants_attention(modality, i)
        x, attn = block_forward(blk, x, attn_mask, lora.get(i), need, streams)
        if hook is not None:
            x = hook(x, attn, modality, i, layout)
    return x


class VisionEncoder(nn.Module):
    """The image tower of a frozen open_clip CLIP with appended deep prompts and optional LoRA."""

    def __init__(self, visual: nn.Module, lora: dict[int, AttentionLoRA] | None = None) -> None:
        super().__init__()
        _check_blocks(visual.transformer.resblocks, visual.transformer.batch_first)
        self._visual = [visual]  # not a submodule: the CLIP is owned (and moved) by the method
        self.lora = nn.ModuleDict({str(k): v for k, v in (lora or {}).items()})
        self.width = visual.transformer.width
        self.layers = len(visual.transformer.resblocks)

    def forward(
        self,
        images: torch.Tensor,
        prompts: list[torch.Tensor] | None = None,
        hook: LayerHook | None = None,
        adapters: bool = True,
        streams: Streams | None = None,
        members: int = 1,
    ) -> torch.Tensor:
        """images [B,3,H,W] -> features [members·B,E] (not normalised): each image once through
        the patch embedding, then through the blocks once per member, each member's rows with
        its own prompts ([n,D] shared, or [members·B,n,D] per row) and LoRA. adapters=False runs
        the original tower (no LoRA), as the frozen branch must whatever LoRA has learnt;
        `streams`: the members' draws for LoRA dropout in training."""
        visual = self._visual[0]
        x = visual._embeds(images)  # [B,1+N,D], ln_pre applied
        if members > 1:
            x = x.repeat(members, 1, 1)  # [K·B,1+N,D]: the members' copies of the batch
        n_seq = x.shape[1]
        prompts = prompts or []
        if prompts:
            # Appended after [CLS]+patches, no positional embedding, through ln_pre like the
            # rest (LayerNorm is per token, so normalising them apart is the same thing).
            p = prompts[0]
            p = p.expand(x.shape[0], -1, -1) if p.dim() == 2 else p
            x = torch.cat([x, visual.ln_pre(p.to(x.dtype))], 1)
        layout = self.layout(x.shape[0], x.shape[1], x.device) if hook is not None else None
        lora = {int(k): v for k, v in self.lora.items()} if adapters else {}
        x = _run_blocks(
            visual.transformer.resblocks, x, None, [(n_seq, prompts)], lora, hook, "vision",
            layout, streams,
        )  # fmt: skip
        pooled, _ = visual._pool(x[:, :n_seq])
        return pooled @ visual.proj if visual.proj is not None else pooled

    @staticmethod
    def layout(batch: int, seq: int, device: torch.device) -> TokenLayout:
        valid = torch.ones(batch, seq, dtype=torch.bool, device=device)
        content = valid.clone()
        content[:, 0] = False  # [CLS] is the global token and never dropped
        return TokenLayout(
            torch.zeros(batch, dtype=torch.long, device=device), valid, content, content
        )


class TextEncoder(nn.Module):
    """The text tower of a frozen open_clip CLIP over pre-embedded prompts with deep context."""

    def __init__(self, clip: nn.Module, lora: dict[int, AttentionLoRA] | None = None) -> None:
        super().__init__()
        _check_blocks(clip.transformer.resblocks, clip.transformer.batch_first)
        if clip.text_pool_type != "argmax":
            raise ValueError("text tower must pool at [EOT] (text_pool_type='argmax')")
        self.clip = [clip]  # not a submodule: the CLIP is owned (and moved) by the method
        self.lora = nn.ModuleDict({str(k): v for k, v in (lora or {}).items()})
        self.width = clip.transformer.width
        self.layers = len(clip.transformer.resblocks)

    def embed(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [C,L] -> (frozen token embeddings [C,L',D] truncated after the last [EOT],
        [EOT] positions [C])."""
        eot = token_ids.argmax(dim=-1)
        length = int(eot.max()) + 1
        clip = self.clip[0]
        return clip.token_embedding(token_ids[:, :length]), eot

    def forward(
        self,
        embedded: torch.Tensor,
        eot: torch.Tensor,
        prompts: list[torch.Tensor] | None = None,
        prompt_start: int = 1,
        hook: LayerHook | None = None,
        adapters: bool = True,
    ) -> torch.Tensor:
        """embedded [C,L,D] (from `embed`), eot [C] -> features [C,E] (not normalised).
        adapters=False runs the original tower (no LoRA), as the frozen branch must.

        prompts[i] ([n,D] shared or [C,n,D]) replace positions prompt_start..prompt_start+n at
        layer i; layer 0's replace the token embeddings of the context words."""
        call = self.call(embedded, eot, prompts, prompt_start, hook is not None)
        return self.run(call, hook, adapters)

    def call(
        self,
        embedded: torch.Tensor,
        eot: torch.Tensor,
        prompts: list[torch.Tensor] | None = None,
        prompt_start: int = 1,
        with_layout: bool = False,
    ) -> TextCall:
        """The pass `forward` makes, built but not run."""
        clip = self.clip[0]
        L = embedded.shape[1]
        prompts = prompts or []
        x = _place(embedded, prompt_start, prompts[0]) if prompts else embedded
        cast = clip.transformer.get_cast_dtype()
        x = x.to(cast) + clip.positional_embedding[:L].to(cast)
        mask = clip.attn_mask[:L, :L] if clip.attn_mask is not None else None
        layout = None
        if with_layout:
            n_ctx = prompts[0].shape[-2] if prompts else 0
            layout = self.layout(eot, L, prompt_start, n_ctx, x.device)
        return TextCall(x, mask, [(prompt_start, prompts)], eot, layout)

    def run(
        self,
        call: TextCall,
        hook: LayerHook | None = None,
        adapters: bool = True,
        streams: Streams | None = None,
    ) -> torch.Tensor:
        """Features [N,E] (not normalised) of a built pass."""
        return self.encode(
            call.x, call.mask, call.spans, call.pool, hook, call.layout, adapters, streams
        )

    def encode(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        spans: list[Span],
        pool_index: torch.Tensor,
        hook: LayerHook | None = None,
        layout: TokenLayout | None = None,
        adapters: bool = True,
        streams: Streams | None = None,
    ) -> torch.Tensor:
        """The tower over a sequence that is already embedded (positions added): x [C,S,D],
        attn_mask [S,S] or per-sequence [C,S,S] (additive), pooled at pool_index [C]."""
        clip = self.clip[0]
        lora = {int(k): v for k, v in self.lora.items()} if adapters else {}
        x = _run_blocks(
            clip.transformer.resblocks, x, attn_mask, spans, lora, hook, "text", layout, streams
        )
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pool_index]
        proj = clip.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @staticmethod
    def layout(
        eot: torch.Tensor, length: int, prompt_start: int, n_ctx: int, device: torch.device
    ) -> TokenLayout:
        pos = torch.arange(length, device=device)[None, :]  # [1,L]
        eot = eot.to(device)[:, None]
        valid = pos <= eot  # padding after [EOT] is no token of the prompt
        content = pos < eot
        # SOT and the learnable context; never class-name tokens, [EOT] or padding.
        target = pos < prompt_start + n_ctx
        return TokenLayout(eot[:, 0], valid, content, target & content)
