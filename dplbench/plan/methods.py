"""A method's resolved config: its recipe for the protocol, dataset and shot count, then the
caller's layers (suite overrides, then the command line).

configs/methods/<name>.yaml is the method's release recipe, each value with its source:

    <MethodConfig keys>           every protocol (e.g. optimiser, batch)
    datasets: {<dataset>: ...}    every protocol, one dataset (e.g. KgCoOp's DTD template)
    protocols:
      <section>:                  base2novel | fewshot | xd (`PROTOCOL_SECTION` maps protocols)
        <MethodConfig keys>
        shots: {<K>: ...}         few-shot K
        datasets: {<dataset>: ...}

Layers apply in that order (typed defaults first), so a protocol's dataset section wins over its
shot section: CoOp trains ImageNet 50 epochs at every K.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpl.config import MethodConfig
from dpl.methods import METHODS, method_config
from dplbench.errors import ConfigError
from dplbench.plan.config import CONFIG_DIR, deep_merge, load_yaml

METHOD_DIR = CONFIG_DIR / "methods"
# The recipe section each protocol trains with: dg evaluates xd's ImageNet-trained prompts (one
# job for both when the configs agree), and the long-tail protocol trains on base classes as
# base-to-novel does (the DPL release runs it with its base-to-novel settings).
PROTOCOL_SECTION = {
    "base2novel": "base2novel",
    "longtail": "base2novel",
    "fewshot": "fewshot",
    "xd": "xd",
    "dg": "xd",
}
SECTIONS = ("base2novel", "fewshot", "xd")


def check_method(name: str) -> None:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS.names())}")


def recipe_layers(
    name: str, protocol: str | None, dataset: str | None, shots: int | None
) -> list[dict[str, Any]]:
    """The layers of the method's recipe that apply, in order: configs/methods/<name>.yaml, or
    the YAML a plug-in method registered (`register(..., recipe=PATH)`). Read-only: they are
    computed once per (method, protocol, dataset, shots) and version of the file."""
    key = (name, id(METHODS.get(name)), protocol, dataset, shots, _recipe_version(name))
    if key not in _LAYERS:
        _LAYERS[key] = _recipe_layers(name, protocol, dataset, shots)
    return _LAYERS[key]


_LAYERS: dict[tuple, list[dict[str, Any]]] = {}


def _recipe_layers(
    name: str, protocol: str | None, dataset: str | None, shots: int | None
) -> list[dict[str, Any]]:
    spec = METHODS.get(name)
    path = Path(spec.recipe) if spec.recipe else METHOD_DIR / f"{name}.yaml"
    if spec.recipe and not path.is_file():
        raise ConfigError(f"method {name}: its recipe {path} does not exist")
    recipe = load_yaml(path) if path.is_file() else {}
    protocols = recipe.pop("protocols", None) or {}
    per_dataset = recipe.pop("datasets", None) or {}
    unknown = set(protocols) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown protocol section {sorted(unknown)[0]}; valid: {', '.join(SECTIONS)}"
        )
    layers = [recipe, per_dataset.get(dataset) or {}]
    section = dict(protocols.get(PROTOCOL_SECTION.get(protocol, ""), None) or {})
    by_shots = section.pop("shots", None) or {}
    by_dataset = section.pop("datasets", None) or {}
    layers += [section, by_shots.get(shots) or {}, by_dataset.get(dataset) or {}]
    return layers


def resolve_method(
    name: str,
    *layers: dict[str, Any],
    protocol: str | None = None,
    dataset: str | None = None,
    shots: int | None = None,
) -> MethodConfig:
    check_method(name)
    spec = METHODS.get(name)
    # Jobs that differ only in seed share one resolution (a MethodConfig is frozen); the key
    # holds everything the result depends on, the registered spec (a plug-in may re-register)
    # and the recipe file's version included.
    key = (name, id(spec), protocol, dataset, shots, _recipe_version(name),
           json.dumps(layers, sort_keys=True, default=repr))  # fmt: skip
    if key not in _RESOLVED:
        merged: dict[str, Any] = {}
        for layer in (*recipe_layers(name, protocol, dataset, shots), *layers):
            merged = deep_merge(merged, layer or {})
        try:
            _RESOLVED[key] = method_config(name, merged)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"method {name}: {e.args[0] if e.args else e}") from None
    return _RESOLVED[key]


_RESOLVED: dict[tuple, MethodConfig] = {}


def _recipe_version(name: str) -> tuple | None:
    spec = METHODS.get(name)
    path = Path(spec.recipe) if spec.recipe else METHOD_DIR / f"{name}.yaml"
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_mtime_ns, st.st_size)
