"""The method registry (re-exported by dpl.methods): a method is a name, its typed default
`MethodConfig` and the module class that builds it (imported only when a model is built, so
naming methods needs no torch).

Methods are found by name in this registry (the built-ins of dpl/methods/catalog.py), then in
installed packages' entry points (group `dplbench.methods`), then in modules named by
`load_plugins` (`--plugin MODULE` / $DPLBENCH_PLUGINS). A plug-in module calls `register` when
imported; an entry point names such a module, or a function that registers. The contract, with a
worked example: docs/adding-a-method.md.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpl.config import MethodConfig
from dpl.registry import Registry, UnknownNameError  # noqa: F401  (re-exported)
from dpl.typed import merge

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dplbench.methods"
PLUGINS_ENV = "DPLBENCH_PLUGINS"  # comma list of modules, as --plugin
DEFAULT_MODULE = "dpl.methods.base:PromptedCLIP"


class PluginError(ValueError):
    """A plug-in that cannot be loaded, or registers something broken (one line: which, why)."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    defaults: MethodConfig
    module: str  # "package.module:Class": the PromptedCLIP subclass that builds the model
    plugins: bool = True  # IWTD / RER / MAG may be switched on
    uses_llm: bool = False  # its jobs read an LLM cache (dplbench llm cache)
    recipe: str | None = None  # its recipe YAML; None: dplbench/configs/methods/<name>.yaml
    trains: bool = True  # False: nothing to train (zero-shot), its jobs only evaluate
    # its jobs may train in fused groups: its model class is built over the member axis
    # (dpl/members.py); a plug-in says so when its class is (docs/adding-a-method.md)
    fusable: bool = False

    def model_class(self) -> type:
        mod, _, cls = self.module.partition(":")
        try:
            return getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as e:
            raise PluginError(f"method {self.name}: cannot import {self.module} ({e})") from None


class _Methods(Registry[MethodSpec]):
    """The registry, completed on demand from entry points and $DPLBENCH_PLUGINS: a lookup of an
    unknown name, or a listing, discovers them first."""

    def __init__(self) -> None:
        super().__init__("method")
        self._discovered = False

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        load_entry_points()
        load_plugins(_env_plugins())

    def get(self, name: str) -> MethodSpec:
        if name not in self._items:
            self.discover()
        return super().get(name)

    def names(self) -> list[str]:
        self.discover()
        return super().names()

    def in_order(self) -> list[str]:
        self.discover()
        return super().in_order()

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self.discover()
        return name in self._items


METHODS = _Methods()


def register(
    name: str,
    defaults: MethodConfig,
    module: str = DEFAULT_MODULE,
    plugins: bool = True,
    uses_llm: bool = False,
    recipe: str | os.PathLike | None = None,
    trains: bool = True,
    fusable: bool = False,
) -> MethodSpec:
    """Register a method. `module` names its model class as "package.module:Class" (a
    PromptedCLIP subclass taking (cfg, clip)); `recipe` its training recipe YAML; its traits:
    `plugins` (takes IWTD / RER / MAG), `uses_llm`, `trains`, `fusable`."""
    if not isinstance(defaults, MethodConfig):
        raise PluginError(f"method {name}: defaults must be a dpl.config.MethodConfig")
    if defaults.method != name:
        raise PluginError(f"method {name}: its defaults say method={defaults.method!r}")
    if ":" not in module:
        raise PluginError(f"method {name}: module {module!r} must read 'package.module:Class'")
    path = str(Path(recipe).resolve()) if recipe else None
    spec = MethodSpec(name, defaults, module, plugins, uses_llm, path, trains, fusable and trains)
    METHODS.register(name, spec)
    return spec


def _env_plugins() -> list[str]:
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def plugin_modules(named: Iterable[str] = ()) -> tuple[str, ...]:
    """The plug-in modules a run uses: $DPLBENCH_PLUGINS, then those `named` (--plugin)."""
    return tuple(dict.fromkeys([*_env_plugins(), *named]))


# A per-process cache: the plug-in modules and entry points imported (an import registers).
_LOADED: set[str] = set()


def load_plugins(modules: Iterable[str]) -> None:
    """Import each plug-in module once (it registers its methods)."""
    for module in modules:
        if module in _LOADED:
            continue
        if "/" in module or "\\" in module or module.endswith(".py"):
            raise PluginError(
                f"plugin {module!r}: give a module name (lab_methods, lab.methods), importable "
                "from this Python: pip install -e your package, or put its folder on PYTHONPATH"
            )
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if not e.name or not (module == e.name or module.startswith(e.name + ".")):
                # a module the plug-in itself imports is missing: the plug-in's problem
                raise PluginError(f"plugin {module!r} failed to load: {e}") from None
            raise PluginError(
                f"plugin {module!r}: no such module in this Python ({e}); pip install -e its "
                "package, or put the folder that holds it on PYTHONPATH"
            ) from None
        except Exception as e:  # a plug-in's own bug, named as such
            raise PluginError(
                f"plugin {module!r} failed to load: {type(e).__name__}: {e}"
            ) from None
        _LOADED.add(module)


def load_entry_points() -> None:
    """Installed packages' methods (entry point group `dplbench.methods`): each entry point is a
    module that registers on import, or a function to call."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in _LOADED:
            continue
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as e:
            raise PluginError(
                f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}) failed to "
                f"load: {type(e).__name__}: {e}"
            ) from None
        _LOADED.add(ep.value)


def check_config(spec: MethodSpec, cfg: MethodConfig) -> None:
    """What a method's config may say beyond each value's range (dpl/config.py): DPL's plug-ins
    only where the method takes them; a LoRA rank where LoRA is all its recipe trains; epochs where it
    trains."""
    on = [p for p in ("iwtd", "rer", "mag") if getattr(cfg, p).enabled]
    if on and not spec.plugins:
        raise ValueError(
            f"{on[0]}.enabled=true: method {spec.name} does not take the IWTD/RER/MAG "
            "plug-ins (they switch onto coop, maple, promptsrc, clip_lora, llamp and dpl)"
        )
    d = spec.defaults
    if (
        d.lora.rank > 0
        and not (d.prompts.n_ctx_text or d.prompts.n_ctx_vision)
        and cfg.lora.rank < 1
    ):
        raise ValueError(
            f"lora.rank={cfg.lora.rank}: method {spec.name} trains LoRA only, so 1 or more"
        )
    if spec.trains and not cfg.optim.iterations and cfg.optim.epochs < 1:
        raise ValueError(
            f"optim.epochs={cfg.optim.epochs}: method {spec.name} trains, so 1 or more "
            "(or optim.iterations)"
        )


def method_config(name: str, overrides: dict[str, Any] | None = None) -> MethodConfig:
    """The method's defaults with nested overrides applied (unknown keys and values out of range
    raise)."""
    spec = METHODS.get(name)
    cfg = merge(spec.defaults, overrides or {})
    if cfg.method != name:
        raise ValueError(f"config says method={cfg.method!r} but was built as {name!r}")
    check_config(spec, cfg)
    return cfg


def build_method(
    cfg: MethodConfig | Sequence[MethodConfig], clip: Any = None, gens: Sequence[Any] | None = None
) -> Any:
    """The method's model (a PromptedCLIP) on `clip` (default: loaded from the backbone config):
    one run (`cfg`), or the members of a fused group (their configs, dpl/members.py); `gens`:
    each member's generator for its initial values (None: torch's global stream)."""
    cfgs = [cfg] if isinstance(cfg, MethodConfig) else list(cfg)
    spec = METHODS.get(cfgs[0].method)
    for c in cfgs:
        check_config(spec, c)
    if len({c.method for c in cfgs}) != 1:
        raise ValueError("the members of one model must be of one method")
    model_cls = spec.model_class()
    if "gens" in inspect.signature(model_cls.__init__).parameters:
        return model_cls(cfgs if len(cfgs) > 1 else cfgs[0], clip, gens)
    # A model class of one member, (cfg, clip): its initial values from torch's global stream,
    # seeded as the member's generator is.
    if len(cfgs) > 1:
        raise PluginError(
            f"method {cfgs[0].method}: its model class takes no `gens`, so it builds one member "
            "and cannot train fused; build it over the member axis (docs/adding-a-method.md) "
            "or register it with fusable=False"
        )
    import torch

    with torch.random.fork_rng(devices=[]):
        if gens and gens[0] is not None:
            torch.manual_seed(gens[0].initial_seed())
        return model_cls(cfgs[0], clip)
