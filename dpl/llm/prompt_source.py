"""LLM prompt tokens for CLIP's text tower (LLaMP, CVPR 2024; the DPL release is its fork).

P learnable input tokens, shared by all classes, go through a trainable copy of the LLM's last
decoder layer against each class's cached description (dpl/llm/cache.py), then its final norm.
Each prompted text layer i gets its own map of the P outputs, h̃_i = W_i h + b_i, with W_i a
bias-free Linear(LLM width -> text width) and b_i a per-token bias [P, width] (DroPLe
models/drople.py `text_proj`, `llm_prompt_bias`). Of the layer copy only q_proj, o_proj and the
two norms train; k_proj, v_proj and the MLP stay as the LLM has them (the releases'
--freeze_decoder_kv_proj and --freeze_decoder_ffn, both on in their launch.sh).

One set per member (dpl/members.py): tokens [K,P,H], maps [K,width,H], biases [K,depth,P,width],
the trainable parts of the layer copy per member; each member reads the template it drew.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dpl.llm.cache import ClassKnowledge
from dpl.llm.decoder import LlamaDecoderLayer, LlamaLayerShape, RMSNorm
from dpl.members import Gen, StackedLinear, member_parameter, rows_of

FROZEN = ("self_attn.k_proj.", "self_attn.v_proj.", "mlp.")


def _kaiming(shape: tuple[int, ...], gen: Gen) -> torch.Tensor:
    """kaiming_uniform_(a=√5) as the releases initialise prompts: U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(shape[-1])
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


class LlmPromptSource(nn.Module):
    def __init__(
        self,
        shape: LlamaLayerShape,
        n_tokens: int,
        text_width: int,
        depth: int,
        gens: Sequence[Gen] = (None,),
    ) -> None:
        super().__init__()
        k = len(gens)
        self.layer = LlamaDecoderLayer(shape, members=k)  # the LLM's weights: no draws
        self.norm = RMSNorm(shape.hidden, shape.rms_eps, members=k)
        self.tokens = member_parameter(
            torch.stack([_kaiming((n_tokens, shape.hidden), g) for g in gens])
        )
        self.proj = nn.ModuleList(
            StackedLinear(shape.hidden, text_width, bias=False, gens=gens) for _ in range(depth)
        )
        self.bias = member_parameter(
            torch.stack(
                [torch.stack([_kaiming((n_tokens, text_width), g) for _ in range(depth)])
                 for g in gens]
            )
        )  # fmt: skip

    @property
    def n_tokens(self) -> int:
        return self.tokens.shape[1]

    def load_llm(self, state: dict[str, torch.Tensor]) -> None:
        """The LLM's own weights for the layer copy and the final norm (cache's layer file); then
        freeze what the releases freeze."""
        layer = {k[len("layer.") :]: v for k, v in state.items() if k.startswith("layer.")}
        self.layer.load_llm_state(layer)
        with torch.no_grad():
            self.norm.weight.copy_(
                state["norm.weight"].to(self.norm.weight.dtype).expand_as(self.norm.weight)
            )
        with torch.no_grad():
            self.layer.inv_freq = state["inv_freq"].float().to(self.layer.inv_freq.device)
        self.layer.rope_scaling = float(state.get("rope_scaling", torch.tensor(1.0)))
        for name, p in self.layer.named_parameters():
            p.requires_grad_(not name.startswith(FROZEN))

    def forward(self, knowledge: ClassKnowledge, templates: Sequence[int]) -> list[torch.Tensor]:
        """The per-layer text prompts [K·C,P,text width] of every class, each member with its
        template (`templates[k]`)."""
        device = self.tokens.device

        def rows(table) -> torch.Tensor:
            parts = [table[t].to(device, non_blocking=True) for t in templates]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        k, v, mask = rows(knowledge.keys), rows(knowledge.values), rows(knowledge.mask)
        members = self.tokens.shape[0]
        c = k.shape[0] // members
        tokens = self.tokens[:, None].expand(-1, c, -1, -1).flatten(0, 1)  # [K·C,P,H]
        h = self.norm(self.layer(tokens, k, v, mask))
        hk = h.view(members, -1, h.shape[-1])  # [K,C·P,H]
        bias = self.bias[:, :, None].expand(-1, -1, c, -1, -1)  # [K,depth,C,P,width]
        return [
            rows_of(proj(hk).view(members, c, self.n_tokens, -1) + bias[:, i])
            for i, proj in enumerate(self.proj)
        ]
