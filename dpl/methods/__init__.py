"""The method registry: each method is a default `MethodConfig` plus a module class.

cfg = method_config("dpl", {"iwtd": {"drop_mode": "zero"}})
model = build_method(cfg)            # frozen CLIP loaded from cfg.backbone
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import open_clip

from dpl.methods.base import PromptedCLIP
from dpl.methods.config import MethodConfig, from_dict, merge, to_dict
from dpl.registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    defaults: MethodConfig
    module: type[PromptedCLIP]
    plugins: bool  # IWTD / RER / MAG may be switched on


METHODS: Registry[MethodSpec] = Registry("method")


def register(
    name: str,
    defaults: MethodConfig,
    module: type[PromptedCLIP] = PromptedCLIP,
    plugins: bool = True,
) -> None:
    METHODS.register(name, MethodSpec(defaults, module, plugins))


def method_config(name: str, overrides: dict[str, Any] | None = None) -> MethodConfig:
    """The method's defaults with nested overrides applied (unknown keys raise)."""
    spec = METHODS.get(name)
    cfg = merge(spec.defaults, overrides or {})
    if cfg.method != name:
        raise ValueError(f"config says method={cfg.method!r} but was built as {name!r}")
    return cfg


def build_method(cfg: MethodConfig, clip: open_clip.CLIP | None = None) -> PromptedCLIP:
    spec = METHODS.get(cfg.method)
    if not spec.plugins and (cfg.iwtd.enabled or cfg.rer.enabled or cfg.mag.enabled):
        raise ValueError(f"method {cfg.method} does not take the IWTD/RER/MAG plug-ins")
    return spec.module(cfg, clip)


# Registration order is the field's chronological order, which reports list methods in; each
# module registers itself when imported.
for _name in (
    "zsclip",
    "coop",
    "cocoop",
    "kgcoop",
    "ivlp",
    "maple",
    "llamp",
    "promptsrc",
    "clip_lora",
    "dpl",
    "dpl_release",
):
    importlib.import_module(f"dpl.methods.{_name}")

__all__ = [
    "METHODS",
    "MethodConfig",
    "PromptedCLIP",
    "build_method",
    "from_dict",
    "method_config",
    "register",
    "to_dict",
]
