"""Strict nested construction of typed configs: `from_dict` (unknown keys and bad values raise,
naming the key and the valid ones), `merge` (a copy with nested updates) and `to_dict` (plain
nested data, for YAML, result rows and job ids). Torch-free; dpl/config.py holds the classes.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if str in args and isinstance(value, str):  # "all", "0.5:1": a string stays one
            return value
        errors = []
        for arg in (a for a in args if a is not str):  # the first type the value converts to
            try:
                return _convert(arg, value, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[-1] if errors else f"{where}: cannot read {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(tp)
        inner = args[0]
        return tuple(_convert(inner, v, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and float(value) != out:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        return str(value)
    return value


@functools.cache
def _fields_of(cls: type) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A dataclass's field types and names in order (typing.get_type_hints is slow; classes do
    not change)."""
    return typing.get_type_hints(cls), tuple(f.name for f in dataclasses.fields(cls))


def _known(keys: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    unknown = set(keys).difference(names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown config key {prefix}{sorted(unknown)[0]}; valid keys: "
            + ", ".join(f"{prefix}{n}" for n in sorted(names))
        )


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a nested mapping; unknown keys raise with the valid ones."""
    hints, names = _fields_of(cls)
    _known(data, names, where)
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def merge(config: Any, updates: dict[str, Any], where: str = "") -> Any:
    """A copy of dataclass `config` with nested `updates` applied (strict). Sections the updates
    do not touch are kept as they are (already checked); those they touch are rebuilt and
    checked, as is `config` itself."""
    names = _fields_of(type(config))[1]
    _known(updates, names, where)
    data = {n: getattr(config, n) for n in names}
    for k, v in updates.items():
        cur, at = data[k], f"{where}.{k}" if where else k
        if isinstance(v, dict) and dataclasses.is_dataclass(cur) and not isinstance(cur, type):
            data[k] = merge(cur, v, at)
        elif isinstance(v, dict) and isinstance(cur, dict):
            data[k] = deep_merge(cur, v)
        else:
            data[k] = v
    return from_dict(type(config), data, where)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` laid over it, nested mappings merged key by key (inputs unchanged)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (dataclasses as dicts in field order, tuples as lists), e.g. for YAML, a
    results row or a job's id: what `plain(dataclasses.asdict(config))` gives, without its
    copies (a 10^4-job plan converts thousands of configs)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {n: plain(getattr(v, n)) for n in _fields_of(type(v))[1]}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(config)
