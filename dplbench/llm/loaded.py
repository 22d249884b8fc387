"""The LLM as the cache step loads it: Hugging Face transformers (imported here only), a Llama
checkpoint, and the pieces of it training needs (its last decoder layer, final norm and RoPE)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dplbench.errors import ConfigError, UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(
            "the LLM cache step needs Hugging Face transformers: pip install 'dplbench[llm]'"
        ) from None
    return transformers


@dataclass
class LoadedLLM:
    model: object
    tokenizer: object
    name: str
    revision: str | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_llm(name: str, dtype: str, device: str, revision: str | None = None) -> LoadedLLM:
    tf = _transformers()
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    try:
        tok = tf.AutoTokenizer.from_pretrained(name, revision=revision)
        model = tf.AutoModelForCausalLM.from_pretrained(
            name, revision=revision, dtype=DTYPES[dtype]
        )
    except OSError as e:
        raise UserError(f"cannot load the LLM {name!r}: {str(e).splitlines()[0]}") from None
    cfg = model.config
    if cfg.model_type != "llama" or getattr(cfg, "attention_bias", False):
        raise ConfigError(
            f"{name}: a {cfg.model_type} model; the LLM prompt source reimplements Llama's "
            "decoder layer (Llama-2/3 checkpoints)"
        )
    if tok.pad_token is None:  # Llama-3 has none; pads are masked, so any id does
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    revision = revision or getattr(cfg, "_commit_hash", None)
    return LoadedLLM(model.to(device).eval(), tok, name, revision)


def layer_manifest(llm: LoadedLLM) -> dict:
    c = llm.model.config
    return {
        "hidden": c.hidden_size,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "intermediate": c.intermediate_size,
        "rms_eps": c.rms_norm_eps,
    }


def layer_tensors(llm: LoadedLLM) -> dict[str, torch.Tensor]:
    """The last decoder layer, the final norm and RoPE: all training needs of the LLM itself."""
    inner = llm.model.model
    out = {f"layer.{k}": v for k, v in inner.layers[-1].state_dict().items()}
    out["norm.weight"] = inner.norm.weight
    out["inv_freq"] = inner.rotary_emb.inv_freq.float()
    out["rope_scaling"] = torch.tensor(float(inner.rotary_emb.attention_scaling))
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}
