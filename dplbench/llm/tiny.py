"""`dplbench llm tiny`: a tiny random-init Llama and a word-level tokenizer with a chat template,
saved as a Hugging Face model folder. It stands in for Llama-3-8B-Instruct in tests and on
machines that cannot download it: the cache step and training take the same paths with it."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dplbench.llm.loaded import _transformers
from dplbench.llm.recipes import SYSTEM, llm_templates

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<system>", "<user>", "<assistant>"]


def _words(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})


def make_tiny_llm(
    out: str | Path,
    classnames: list[str],
    datasets: tuple[str, ...] = ("synthetic",),
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny Llama (random weights, fixed seed) whose vocabulary covers the prompts the
    cache step builds for `classnames` under the `datasets`' templates."""
    tf = _transformers()
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    templates = [t for d in datasets for t in llm_templates(d)]
    text = [SYSTEM, "In one sentence,", "The appears as", *classnames, *templates]
    vocab = {t: i for i, t in enumerate(SPECIAL + _words(text))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(SPECIAL)  # matched whole, before the split into words
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_bos_token = True
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    model = tf.LlamaForCausalLM(cfg)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
