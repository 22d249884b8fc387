import atexit
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
logging.getLogger().setLevel(logging.ERROR)  # open_clip warns on every random-init model

TINY = {"backbone": {"model": "dpl-tiny", "pretrained": None}}


# Tiny models are overhead-bound: one thread is faster and immune to a busy neighbour.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(overrides: dict | None = None) -> dict:
    """Overrides for a method on the tiny random-init CLIP (merged over TINY)."""
    out = {k: dict(v) for k, v in TINY.items()}
    for k, v in (overrides or {}).items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


# Class names the tests use: test_methods' four, and the synthetic benchmark's.
LLM_TEST_CLASSES = ["dog", "cat", "red car", "sunflower"]


@functools.lru_cache(maxsize=1)
def tiny_llm_cache() -> str:
    """A tiny random Llama and its knowledge cache for the `synthetic` dataset (built once per
    test session, as `dplbench llm tiny` + `dplbench llm cache` would)."""
    from dplbench.data.synth import WORDS
    from dplbench.llm.build import build_cache
    from dplbench.llm.tiny import make_tiny_llm

    root = Path(tempfile.mkdtemp(prefix="dpl-llm-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    names = LLM_TEST_CLASSES + [w.replace("_", " ") for w in WORDS]
    model = make_tiny_llm(root / "model", names)
    build_cache(str(model), {"synthetic": names}, root / "cache", dtype="fp32", max_new_tokens=6)
    return str(root / "cache")


def llm_overrides(name: str) -> dict:
    """What a method with the LLM prompt source needs on top of tiny(): a cache."""
    from dpl.methods import METHODS

    if METHODS.get(name).uses_llm:
        return {"llm": {"cache": tiny_llm_cache()}}
    return {}
