"""Layer settings that carry over between towers of different depths (docs/dpl.md §2).

A depth (how many layers get prompts, IWTD) is an int (that many layers, at most the tower's) or a
fraction of the tower in (0, 1]: 0.75 is 9 of ViT-B/16's 12 layers and 18 of ViT-L/14's 24. A layer
set (LoRA) is a tuple of indices, `"all"`, or a slice `"a:b"` of indices, or of fractions of the
tower when either bound has a decimal point: `"0.5:1"` is layers 6-11 of ViT-B/16 and 12-23 of
ViT-L/14.
"""

from __future__ import annotations


def resolve_depth(value: int | float, layers: int) -> int:
    """How many of a tower's `layers` a depth setting covers."""
    if isinstance(value, float) and not float(value).is_integer():
        if not 0 < value <= 1:
            raise ValueError(f"depth {value}: a layer count or a fraction of the tower in (0, 1]")
        return max(1, round(value * layers))
    return max(0, min(int(value), layers))


def _bound(text: str, layers: int, default: int, fraction: bool) -> int:
    if not text.strip():
        return default
    value = float(text)
    if fraction:
        if not 0 <= value <= 1:
            raise ValueError(f"layer bound {text}: a fraction in [0, 1]")
        return round(value * layers)
    return int(value)


def resolve_layers(spec: str | tuple[int, ...] | list[int], layers: int) -> tuple[int, ...]:
    """The layer indices of a tower with `layers` layers that a layer-set setting names
    (indices past the tower are dropped)."""
    if isinstance(spec, str):
        if spec.strip() == "all":
            return tuple(range(layers))
        lo, sep, hi = spec.partition(":")
        if not sep:
            raise ValueError(f"layers {spec!r}: 'all', 'a:b' or a list of indices")
        frac = "." in spec  # "0.5:1": both bounds are fractions of the tower
        start, stop = _bound(lo, layers, 0, frac), _bound(hi, layers, layers, frac)
        return tuple(range(start, min(stop, layers)))
    return tuple(i for i in spec if 0 <= i < layers)
