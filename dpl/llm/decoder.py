"""One Llama decoder layer that decodes learnable tokens against a cached prefix.

The LLM prompt source (docs/dpl.md §7) runs only the LLM's *last* decoder layer at training
time: the class descriptions went through the frozen LLM once (`dplbench llm cache`) and what is
kept of them is that layer's keys and values, RoPE already applied. This module is a plain-PyTorch
copy of that layer (RMSNorm, grouped-query attention with rotary positions, SwiGLU MLP) so that
training needs neither `transformers` nor the full model. Tests check it against Hugging Face's own
Llama forward.

Built for K members (dpl/members.py), what trains (q_proj, o_proj, the norms) has a member axis
and the rest (k_proj, v_proj, the MLP) is one frozen copy; rows are member-major. Its weights are
the LLM's (`load_llm`), so the layer draws no initial values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dpl.members import StackedLinear, by_member, member_parameter, rows_of


@dataclass(frozen=True)
class LlamaLayerShape:
    """The sizes of one decoder layer (a Llama config's hidden_size, num_attention_heads, ...)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rms_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise ValueError(f"LLM layer: {self.heads} heads are not a multiple of {self.kv_heads}")


class RMSNorm(nn.Module):
    """Weight [width], or [K,width] with `members` (each member's rows, member-major)."""

    def __init__(self, width: int, eps: float, members: int | None = None) -> None:
        super().__init__()
        self.weight = (
            nn.Parameter(torch.ones(width))
            if members is None
            else member_parameter(torch.ones(members, width))
        )
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight
        if w.dim() == 1:
            return w * x.to(dtype)
        if w.shape[0] == 1:
            return w[0] * x.to(dtype)
        xk = by_member(x.to(dtype), w.shape[0])  # [K,N,...,D]
        return rows_of(w.view(w.shape[0], *([1] * (xk.dim() - 2)), -1) * xk)


def _empty_linear(in_features: int, out_features: int, members: int | None) -> nn.Module:
    """A bias-free map that the LLM's weights fill (no initial draws): one, or one per member."""
    if members is None:
        return nn.Linear(in_features, out_features, bias=False, device="meta").to_empty(
            device="cpu"
        )
    return StackedLinear.stack([torch.empty(out_features, in_features)] * members)


def _member_map(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x [K·N,...,in] through a per-member map (a shared nn.Linear: as it is)."""
    if not isinstance(linear, StackedLinear):
        return linear(x)
    k = linear.weight.shape[0]
    xk = by_member(x, k)
    out = linear(xk.reshape(k, -1, x.shape[-1]))
    return rows_of(out.reshape(*xk.shape[:-1], -1))


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float):
    """Rotary position embedding, Llama's half-split convention. x [C,H,P,d], positions [C,P]."""
    freqs = positions[..., None].float() * inv_freq.float()  # [C,P,d/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos = (emb.cos() * scaling).to(x.dtype)[:, None]
    sin = (emb.sin() * scaling).to(x.dtype)[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class LlamaDecoderLayer(nn.Module):
    """Parameter names follow Hugging Face's (`self_attn.q_proj`, `mlp.gate_proj`, ...) so a layer's
    weights load by name from the model's own checkpoint (`load_llm_state`). `members`: the
    trainable parts per member (None: one plain layer, as Hugging Face's)."""

    def __init__(self, shape: LlamaLayerShape, members: int | None = None) -> None:
        super().__init__()
        self.shape = s = shape
        self.input_layernorm = RMSNorm(s.hidden, s.rms_eps, members)
        self.post_attention_layernorm = RMSNorm(s.hidden, s.rms_eps, members)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = _empty_linear(s.hidden, s.heads * s.head_dim, members)
        self.self_attn.k_proj = _empty_linear(s.hidden, s.kv_heads * s.head_dim, None)
        self.self_attn.v_proj = _empty_linear(s.hidden, s.kv_heads * s.head_dim, None)
        self.self_attn.o_proj = _empty_linear(s.heads * s.head_dim, s.hidden, members)
        self.mlp = nn.Module()
        self.mlp.gate_proj = _empty_linear(s.hidden, s.intermediate, None)
        self.mlp.up_proj = _empty_linear(s.hidden, s.intermediate, None)
        self.mlp.down_proj = _empty_linear(s.intermediate, s.hidden, None)
        self.register_buffer("inv_freq", torch.ones(s.head_dim // 2), persistent=False)
        self.rope_scaling = 1.0

    def forward(
        self,
        h: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        past_mask: torch.Tensor,
    ) -> torch.Tensor:
        """h [C,P,hidden]: new tokens, one row per class. past_k/past_v [C,kv_heads,S,head_dim]:
        the cached prefix (RoPE applied); past_mask [C,S] bool: its real tokens. New tokens see
        every real cached token and, causally, each other; their positions continue after the
        prefix's real tokens (Llama numbers real tokens 0..n-1, whatever the padding)."""
        s, attn = self.shape, self.self_attn
        C, P, _ = h.shape
        n_real = past_mask.sum(-1, keepdim=True)  # [C,1]
        positions = n_real + torch.arange(P, device=h.device)[None]  # [C,P]

        x = self.input_layernorm(h)
        q = _member_map(attn.q_proj, x).view(C, P, s.heads, s.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(C, P, s.kv_heads, s.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(C, P, s.kv_heads, s.head_dim).transpose(1, 2)
        q = rotate(q, positions, self.inv_freq, self.rope_scaling)
        k = rotate(k, positions, self.inv_freq, self.rope_scaling)
        k = torch.cat([past_k.to(k.dtype), k], dim=2)
        v = torch.cat([past_v.to(v.dtype), v], dim=2)
        groups = s.heads // s.kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)

        causal = torch.ones(P, P, dtype=torch.bool, device=h.device).tril()
        visible = torch.cat(
            [past_mask.bool()[:, None, :].expand(C, P, -1), causal.expand(C, P, P)], dim=-1
        )  # [C,P,S+P]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None])
        h = h + _member_map(attn.o_proj, out.transpose(1, 2).reshape(C, P, s.heads * s.head_dim))

        x = self.post_attention_layernorm(h)
        mlp = self.mlp
        return h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))

    def load_llm_state(self, state: dict[str, torch.Tensor]) -> None:
        """The LLM's own weights for this layer (Hugging Face names); each member's copy of the
        trainable parts starts from them."""
        own = dict(self.named_parameters())
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise KeyError(f"LLM layer weights: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name].to(p.dtype).expand_as(p))
