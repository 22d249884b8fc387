import logging
import os

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
