"""The methods: a registry of names, typed default configs and the module classes that build
them (registry.py), and the built-ins declared in the field's order (catalog.py).

    cfg = method_config("dpl", {"iwtd": {"drop_mode": "zero"}})
    model = build_method(cfg)            # frozen CLIP loaded from cfg.backbone

A plug-in registers its own (docs/adding-a-method.md): `from dpl.methods import register`.
"""

from dpl.config import MethodConfig
from dpl.methods import catalog  # noqa: F401  (the built-ins register, in the field's order)
from dpl.methods.registry import (
    METHODS,
    MethodSpec,
    PluginError,
    UnknownNameError,
    build_method,
    load_plugins,
    method_config,
    plugin_modules,
    register,
)
from dpl.typed import from_dict, to_dict

__all__ = [
    "METHODS",
    "MethodConfig",
    "MethodSpec",
    "PluginError",
    "UnknownNameError",
    "build_method",
    "from_dict",
    "load_plugins",
    "method_config",
    "plugin_modules",
    "register",
    "to_dict",
]
