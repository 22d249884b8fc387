"""Layered YAML configs: typed defaults < YAML file < `key=value` on the command line.

One parser for values (`parse_value`: YAML scalars and lists, so an explicit `false` wins over a
file's `true`), one helper for dotted keys (`nested`), one merge (`deep_merge`, dpl/typed.py). Unknown keys are
errors wherever they appear (typed specs are built with the strict `from_dict` of
`dpl.config`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dpl.typed import deep_merge, from_dict
from dplbench.errors import ConfigError

# Suites, recipes, references, sweeps, ablations and LLM templates ship inside the package (the
# repository's configs/ links here), so a wheel install finds them as a checkout does.
CONFIG_DIR = Path(str(resources.files("dplbench") / "configs"))
T = TypeVar("T")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


# Parsed files by (path, mtime, size): a plan of 10^4 jobs reads each recipe once, not per job.
_PARSED: dict[tuple[str, int, int], dict[str, Any]] = {}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (a fresh copy: callers may change it), parsed once per
    version of the file."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        _PARSED[key] = data
    return copy.deepcopy(_PARSED[key])


def typed(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """A typed spec from a YAML mapping; unknown keys and bad values are one-line ConfigErrors."""
    try:
        return from_dict(cls, dict(data))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_value(raw: Any) -> Any:
    """A command-line value as YAML (`true`, `0.3`, `[cls,self]`, `null`); strings that YAML 1.1
    leaves as strings but read as numbers (`1e-9`) become floats; non-strings pass through."""
    if not isinstance(raw, str):
        return raw
    if not raw.strip():
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-9 (no dot) as a string
    return value


def split_list(raw: str | None) -> list[str]:
    """ "a,b,[c,d]" -> ["a", "b", "[c,d]"]: commas inside [...] stay (list values)."""
    out, depth, cur = [], 0, ""
    for ch in raw or "":
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [v.strip() for v in [*out, cur] if v.strip()]


def nested(flat: Mapping[str, Any], where: str = "override") -> dict[str, Any]:
    """{"iwtd.p_max": 0.4, "rer": {"enabled": False}} -> nested overrides (dotted keys split)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(f"{where}: bad key {key!r}")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key} conflicts with an earlier value of {part}")
        node[leaf] = nested(value, where) if isinstance(value, dict) else value
    return out


def parse_overrides(items: Iterable[str] | None) -> dict[str, Any]:
    """["iwtd.p_max=0.4", "rer.enabled=false"] -> {"iwtd": {"p_max": 0.4}, "rer": {...}}."""
    flat: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. iwtd.p_max=0.4")
        flat[key.strip()] = parse_value(raw)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        out = deep_merge(out, nested({key: value}, f"override {key}={value}"))
    return out
