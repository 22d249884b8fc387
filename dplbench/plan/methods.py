"""A method's resolved config: typed defaults < configs/methods/<name>.yaml < the caller's layers.

The method file may hold a `datasets:` section (e.g. ImageNet's 5 epochs), applied after the
file's top level and before the caller's layers (suite overrides, then the command line).
"""

from __future__ import annotations

from typing import Any

from dpl.methods import METHODS, method_config
from dpl.methods.config import MethodConfig
from dplbench.errors import ConfigError
from dplbench.plan.config import CONFIG_DIR, deep_merge, load_yaml

METHOD_DIR = CONFIG_DIR / "methods"


def check_method(name: str) -> None:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS.names())}")


def resolve_method(name: str, *layers: dict[str, Any], dataset: str | None = None) -> MethodConfig:
    check_method(name)
    path = METHOD_DIR / f"{name}.yaml"
    file_layer = load_yaml(path) if path.is_file() else {}
    per_dataset = file_layer.pop("datasets", {}) or {}
    merged: dict[str, Any] = {}
    for layer in (file_layer, per_dataset.get(dataset, {}), *layers):
        merged = deep_merge(merged, layer or {})
    try:
        return method_config(name, merged)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"method {name}: {e.args[0] if e.args else e}") from None
