"""LLM prompt tokens for CLIP's text tower (LLaMP, CVPR 2024; the DPL release is its fork).

P learnable input tokens, shared by all classes, go through a trainable copy of the LLM's last
decoder layer against each class's cached description (dpl/llm/cache.py), then its final norm.
Each prompted text layer i gets its own map of the P outputs, h̃_i = W_i h + b_i, with W_i a
bias-free Linear(LLM width -> text width) and b_i a per-token bias [P, width] (DroPLe
models/drople.py `text_proj`, `llm_prompt_bias`). Of the layer copy only q_proj, o_proj and the
two norms train; k_proj, v_proj and the MLP stay as the LLM has them (the releases'
--freeze_decoder_kv_proj and --freeze_decoder_ffn, both on in their launch.sh).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dpl.llm.cache import ClassKnowledge
from dpl.llm.decoder import LlamaDecoderLayer, LlamaLayerShape, RMSNorm

FROZEN = ("self_attn.k_proj.", "self_attn.v_proj.", "mlp.")


def _kaiming(shape: tuple[int, ...]) -> torch.Tensor:
    """kaiming_uniform_(a=√5) as the releases initialise prompts: U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(shape[-1])
    return torch.empty(shape).uniform_(-bound, bound)


class LlmPromptSource(nn.Module):
    def __init__(self, shape: LlamaLayerShape, n_tokens: int, text_width: int, depth: int) -> None:
        super().__init__()
        self.layer = LlamaDecoderLayer(shape)
        self.norm = RMSNorm(shape.hidden, shape.rms_eps)
        self.tokens = nn.Parameter(_kaiming((n_tokens, shape.hidden)))
        self.proj = nn.ModuleList(
            nn.Linear(shape.hidden, text_width, bias=False) for _ in range(depth)
        )
        self.bias = nn.Parameter(
            torch.stack([_kaiming((n_tokens, text_width)) for _ in range(depth)])
        )

    @property
    def n_tokens(self) -> int:
        return self.tokens.shape[0]

    def load_llm(self, state: dict[str, torch.Tensor]) -> None:
        """The LLM's own weights for the layer copy and the final norm (cache's layer file); then
        freeze what the releases freeze."""
        layer = {k[len("layer.") :]: v for k, v in state.items() if k.startswith("layer.")}
        self.layer.load_state_dict(layer, strict=True)
        self.norm.load_state_dict({"weight": state["norm.weight"]})
        with torch.no_grad():
            self.layer.inv_freq = state["inv_freq"].float().to(self.layer.inv_freq.device)
        self.layer.rope_scaling = float(state.get("rope_scaling", torch.tensor(1.0)))
        for name, p in self.layer.named_parameters():
            p.requires_grad_(not name.startswith(FROZEN))

    def forward(self, knowledge: ClassKnowledge, template: int) -> list[torch.Tensor]:
        """The per-layer text prompts [C,P,text width] of every class, for one template."""
        device = self.tokens.device
        k = knowledge.keys[template].to(device, non_blocking=True)
        v = knowledge.values[template].to(device, non_blocking=True)
        mask = knowledge.mask[template].to(device, non_blocking=True)
        C = k.shape[0]
        h = self.layer(self.tokens.expand(C, -1, -1), k, v, mask)
        h = self.norm(h)
        return [proj(h) + b for proj, b in zip(self.proj, self.bias)]
