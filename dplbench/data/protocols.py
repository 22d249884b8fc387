"""The evaluation protocols of docs/protocols.md §2: one implementation of each rule.

Items are anything; `label_of(item)` gives the label (default: `item[1]`, as in CoOp's
`[path, label, classname]` split entries). Functions keep the input order unless stated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
SUBSAMPLES = ("all", "base", "novel")


def _second(item) -> int:
    return item[1]


def group_by_label(
    items: Iterable[T], label_of: Callable[[T], int] = _second
) -> dict[int, list[T]]:
    """Label -> its items; labels in order of first appearance (CoOp's `split_dataset_by_label`)."""
    groups: dict[int, list[T]] = {}
    for it in items:
        groups.setdefault(label_of(it), []).append(it)
    return groups


def _sample_per_label(items, k, rng, label_of):
    out = []
    for group in group_by_label(items, label_of).values():
        out.extend(rng.sample(group, k) if len(group) >= k else group)
    return out


def fewshot_sample(
    train: Sequence[T],
    val: Sequence[T] | None,
    shots: int,
    seed: int,
    label_of: Callable[[T], int] = _second,
) -> tuple[list[T], list[T]]:
    """CoOp-exact few-shot draw (docs/protocols.md §2): a fresh `random.Random(seed)`; per label, in
    order of first appearance in `train`, `rng.sample(items, shots)` if the label has at least
    `shots` items, else all of them; then, with the same rng, `val` with min(shots, 4) shots.
    `val=None` (ImageNet, whose val is its test set) draws no val list. Done over all classes,
    before base/novel subsampling."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = random.Random(seed)
    picked_train = _sample_per_label(train, shots, rng, label_of)
    picked_val = [] if val is None else _sample_per_label(val, min(shots, 4), rng, label_of)
    return picked_train, picked_val


def subsample_labels(labels: Iterable[int], subsample: str) -> list[int]:
    """Base-to-novel (docs/protocols.md §2): labels sorted, m = ceil(n/2); base = the first m, novel
    the rest, all = every label. Returns the original labels of the subset, sorted."""
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got {subsample!r}")
    ordered = sorted(set(labels))
    m = math.ceil(len(ordered) / 2)
    return {"all": ordered, "base": ordered[:m], "novel": ordered[m:]}[subsample]


def label_map(labels: Iterable[int], subsample: str) -> dict[int, int]:
    """Original label -> label within the subset (0..len-1, in sorted original order)."""
    return {old: new for new, old in enumerate(subsample_labels(labels, subsample))}


def longtail_counts(counts: dict[int, int], ratio: float) -> dict[int, int]:
    """Samples kept per class under the long-tail protocol, as the DPL release computes them
    (DroPLe data/coop/oxford_pets.py `gen_imbalanced_data`).

    Classes in order of decreasing count, ties in the order of `counts` (the order of first
    appearance in the train list, as `Counter.most_common`); class i of C keeps
    `ceil(max(n_max * ratio ** (-i / (C - 1)), 1))` samples, at most the class's own count.
    A single class keeps n_max."""
    order = sorted(counts, key=lambda c: -counts[c])  # stable: ties keep their order
    if not order:
        return {}
    n_max, big_c = counts[order[0]], len(order)
    keep = {}
    for i, c in enumerate(order):
        n = n_max if big_c == 1 else math.ceil(max(n_max * ratio ** (-i / (big_c - 1.0)), 1))
        keep[c] = min(n, counts[c])
    return keep


def longtail_select(
    items: Sequence[T],
    labels: Iterable[int],
    ratio: float,
    seed: int,
    label_of: Callable[[T], int] = _second,
) -> list[T]:
    """Long-tail training set: the items of `labels` (the base classes of the full train split)
    made imbalanced with `ratio` (`longtail_counts`). Which items a class keeps: the first ones
    of a shuffle of its items (in source order) by one `random.Random(seed)`, classes visited
    in sorted label order. Returned in source order."""
    wanted = set(labels)
    groups = group_by_label(
        (i for i, it in enumerate(items) if label_of(it) in wanted), lambda i: label_of(items[i])
    )
    keep = longtail_counts({c: len(g) for c, g in groups.items()}, ratio)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for c in sorted(groups):
        positions = list(groups[c])
        rng.shuffle(positions)
        chosen.update(positions[: keep[c]])
    return [items[i] for i in sorted(chosen)]
