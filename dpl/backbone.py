"""The frozen CLIP backbone: an open_clip model by name, weights from a hub tag or a local file.

OpenAI's CLIP weights were trained with QuickGELU; loading them into a standard-GELU model runs but
silently loses accuracy. `load_clip` decides the activation from the weights, never from luck:
hub tags carry the flag in open_clip's registry, OpenAI JIT archives and files whose sha256 matches an
OpenAI release are QuickGELU, and any other local file must say which it is (`quick_gelu=`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import zipfile
from pathlib import Path

import open_clip
import torch
from torch import nn

from dpl.config import BackboneConfig
from dpl.files import sha256_file

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


@functools.cache  # once per process: open_clip's registry is itself process-wide
def register_model_configs() -> None:
    """Make the tiny test architectures (open_clip JSON configs) known to open_clip."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def _openai_sha256s() -> set[str]:
    """The sha256 of every OpenAI release file, as embedded in open_clip's download URLs."""
    hashes = set()
    for model in open_clip.list_models():
        url = open_clip.get_pretrained_url(model, "openai")
        m = re.search(r"/([0-9a-f]{64})/", url or "")
        if m:
            hashes.add(m.group(1))
    return hashes


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def resolve_quick_gelu(cfg: BackboneConfig) -> bool:
    """Whether the model must use QuickGELU for these weights (raises when it cannot tell)."""
    if cfg.quick_gelu is not None:
        return cfg.quick_gelu
    if cfg.model.endswith("-quickgelu") or cfg.pretrained is None:
        return False  # the name already selects QuickGELU, or random init has nothing to match
    tag_cfg = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained)
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False))
    if os.path.isfile(cfg.pretrained):
        if (
            _is_torchscript_archive(cfg.pretrained)
            or sha256_file(cfg.pretrained) in _openai_sha256s()
        ):
            return True
        raise ValueError(
            f"backbone.pretrained={cfg.pretrained}: cannot tell whether these weights use QuickGELU; "
            "set backbone.quick_gelu=true (OpenAI-trained weights) or backbone.quick_gelu=false"
        )
    raise ValueError(
        f"backbone.pretrained={cfg.pretrained!r} is neither a file nor a tag of {cfg.model}; "
        f"known tags: {', '.join(open_clip.list_pretrained_tags_by_model(cfg.model)) or 'none'}"
    )


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def load_clip(cfg: BackboneConfig) -> open_clip.CLIP:
    """Build the CLIP model on CPU in fp32 with all weights frozen; the caller moves it."""
    register_model_configs()
    quick_gelu = resolve_quick_gelu(cfg)
    pretrained = cfg.pretrained
    if pretrained and os.path.isfile(pretrained) and _is_torchscript_archive(pretrained):
        # OpenAI's original JIT archive (what the Dassl forks download): rebuilt from its state dict.
        model = open_clip.load_openai_model(pretrained, precision="fp32", device="cpu")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)  # random weights: a function of the config alone
            model = open_clip.create_model(
                cfg.model,
                pretrained=pretrained,
                force_quick_gelu=quick_gelu,
                cache_dir=cfg.cache_dir,
                require_pretrained=bool(pretrained),
            )
    if not isinstance(model, open_clip.CLIP):
        raise ValueError(
            f"backbone.model={cfg.model}: only open_clip CLIP models with built-in towers are "
            "supported (not CustomTextCLIP/CoCa/timm towers)"
        )
    return freeze(model)
