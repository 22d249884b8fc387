"""What each release's tool runs its LLM with (DroPLe / LLaMP tools/run_inference_chat.py),
and the per-dataset templates the LLM is asked about."""

from __future__ import annotations

from dataclasses import dataclass

from dplbench.errors import ConfigError
from dplbench.plan.config import CONFIG_DIR, load_yaml

TEMPLATES_FILE = CONFIG_DIR / "llm" / "templates.yaml"
SYSTEM = "You are a helpful assistant."  # run_inference_chat.py


@dataclass(frozen=True)
class Recipe:
    """How a release's tool makes its cache (module docstring)."""

    name: str
    instruction: str  # the user message's opening
    max_new_tokens: int
    dtype: str  # the LLM's precision when loaded
    max_prompt_tokens: int  # the prompts' tokenisation truncates here
    max_phrase_tokens: int = 128  # and the noun phrases' (both tools, KV pass)


RECIPES = {
    # DroPLe tools/run_inference_chat.py: :122 message, :89 torch_dtype=float16, generate
    # max_new_tokens=128, tokenizer(..., truncation=True, max_length=256)
    "drople": Recipe("drople", "In one sentence, ", 128, "fp16", 256),
    # LLaMP tools/run_inference_chat.py: :105 message (typo as shipped), :73 no dtype (fp32),
    # generate max_new_tokens=64, tokenizer(..., truncation=True, max_length=128);
    # :155 noun phrases truncated at 128 too
    "llamp": Recipe("llamp", "In one sentece, ", 64, "fp32", 128),
}


def llm_templates(dataset: str) -> list[str]:
    table = load_yaml(TEMPLATES_FILE)
    if dataset not in table:
        raise ConfigError(
            f"{TEMPLATES_FILE}: no LLM templates for dataset {dataset!r}; add a list of them"
        )
    return list(table[dataset])
