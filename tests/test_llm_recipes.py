"""The LLM cache recipes (`dplbench llm cache --recipe`) against the releases' own tools.

Every value below is transcribed by hand from the release's tools/run_inference_chat.py, each
with its file and line: JustCoolPig/DroPLe @ 3c2ef2a ("drople") and zhaohengz/LLaMP @ 3dec7f3
("llamp"). Nothing here reads dplbench's recipes to get an expected value: a drift in
dplbench/llm/recipes.py (or in how the cache step words its prompts) shows here.
"""

import dataclasses
from types import SimpleNamespace

import pytest

from dplbench.llm.recipes import RECIPES, SYSTEM

RELEASE_RECIPES = {
    # DroPLe tools/run_inference_chat.py
    "drople": {
        "name": "drople",
        "instruction": "In one sentence, ",  # :122 apply_chat_template(..., 'In one sentence, ' + p)
        "max_new_tokens": 128,  # :156 model.generate(..., max_new_tokens=128)
        "dtype": "fp16",  # :89 from_pretrained(..., torch_dtype=torch.float16)
        "max_prompt_tokens": 256,  # :131-137 tokenizer(..., truncation=True, max_length=256)
        "max_phrase_tokens": 128,  # :169-175 noun phrases: tokenizer(..., max_length=128)
    },
    # LLaMP tools/run_inference_chat.py
    "llamp": {
        "name": "llamp",
        "instruction": "In one sentece, ",  # :105 'In one sentece, ' + p (the typo as shipped)
        "max_new_tokens": 64,  # :138 model.generate(..., max_new_tokens=64)
        "dtype": "fp32",  # :73 from_pretrained(args.model_path) with no torch_dtype: fp32
        "max_prompt_tokens": 128,  # :110 tokenizer(..., truncation=True, max_length=128)
        "max_phrase_tokens": 128,  # :155 noun phrases: tokenizer(..., max_length=128)
    },
}
# DroPLe run_inference_chat.py:43 and LLaMP run_inference_chat.py:37: the chat's system message
RELEASE_SYSTEM = "You are a helpful assistant."
# DroPLe run_inference_chat.py:125-128 and LLaMP run_inference_chat.py:107-108: appended to the
# chat-formatted prompt, after the chat template, with the class name's "_" as " "
RELEASE_SUFFIX = " The {} appears as"


def test_the_recipes_are_the_two_releases():
    assert set(RECIPES) == set(RELEASE_RECIPES)


@pytest.mark.parametrize("recipe", sorted(RELEASE_RECIPES))
def test_every_value_of_the_recipe_is_the_releases(recipe):
    # every field, so that one added without a release value is caught here too
    assert dataclasses.asdict(RECIPES[recipe]) == RELEASE_RECIPES[recipe]


def test_the_system_message_is_the_releases():
    assert SYSTEM == RELEASE_SYSTEM


@pytest.mark.parametrize("recipe", sorted(RELEASE_RECIPES))
def test_the_cache_step_words_each_prompt_as_the_releases_tool(recipe):
    from dplbench.llm.build import prompts_for

    seen = []

    def apply_chat_template(chat, tokenize):
        assert tokenize is False  # the tools take the chat as text, then append the suffix
        seen.append(chat)
        return "<chat>"

    llm = SimpleNamespace(tokenizer=SimpleNamespace(apply_chat_template=apply_chat_template))
    template = "describe the distinctive appearance of a {}, a type of pet."
    out = prompts_for(llm, ["red car"], template, RECIPES[recipe].instruction)
    user = RELEASE_RECIPES[recipe]["instruction"] + template.format("red car")
    assert seen == [
        [{"role": "system", "content": RELEASE_SYSTEM}, {"role": "user", "content": user}]
    ]
    assert out == ["<chat>" + RELEASE_SUFFIX.format("red car")]
