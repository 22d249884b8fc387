"""Per-sample outcomes of an evaluation pass (#29): which test samples each member got right and
what it predicted, keyed by the sample's key in the dataset's shards, so that two methods (or
seeds) can be compared sample by sample (results/intervals.py). Each rank scores its share of a
split (data/shards.py); `gather` brings the shares together on every rank, sorted by key, so the
published outcomes do not depend on how the samples were split over ranks and loader workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# label and pred are stored as int16 (docs/results.md §1): the largest benchmark has 1000 classes.
MAX_CLASSES = np.iinfo(np.int16).max


@dataclass(frozen=True)
class SampleOutcomes:
    """One member's outcomes on one split: keys [N], labels [N] and predictions [N] (view class
    indices), in key order once gathered."""

    key: tuple[str, ...]
    label: np.ndarray  # [N] int16
    pred: np.ndarray  # [N] int16

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.label  # [N] bool

    def __len__(self) -> int:
        return len(self.key)


class PassRecorder:
    """Collects the keys, labels and every member's predictions of one pass, batch by batch."""

    def __init__(self, members: int) -> None:
        self.keys: list[str] = []
        self.labels: list[torch.Tensor] = []
        self.preds: list[torch.Tensor] = []  # each [K, B]
        self.members = members

    def add(self, keys: Sequence[str], labels: torch.Tensor, pred: torch.Tensor) -> None:
        self.keys += list(keys)
        self.labels.append(labels.cpu())
        self.preds.append(pred.cpu())

    def member(self, k: int) -> SampleOutcomes:
        """Member k's outcomes on this rank's share, unsorted."""
        if not self.keys:
            empty = np.zeros(0, np.int16)
            return SampleOutcomes((), empty, empty)
        label = torch.cat(self.labels).numpy()
        pred = torch.cat([p[k] for p in self.preds]).numpy()
        if max(label.max(), pred.max()) > MAX_CLASSES:
            raise ValueError(f"more than {MAX_CLASSES} classes: outcomes store int16 labels")
        return SampleOutcomes(tuple(self.keys), label.astype(np.int16), pred.astype(np.int16))


def merge(parts: Sequence[SampleOutcomes]) -> SampleOutcomes:
    """The ranks' shares as one, sorted by key (a sample is on exactly one rank: a key twice
    means the split was read twice, which would count its samples twice too)."""
    keys = [k for p in parts for k in p.key]
    label = np.concatenate([p.label for p in parts]) if parts else np.zeros(0, np.int16)
    pred = np.concatenate([p.pred for p in parts]) if parts else np.zeros(0, np.int16)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    ordered = tuple(keys[i] for i in order)
    if any(a == b for a, b in zip(ordered, ordered[1:])):
        raise ValueError("a sample key appears twice in one split's outcomes")
    return SampleOutcomes(ordered, label[order], pred[order])


def gather(local: SampleOutcomes) -> SampleOutcomes:
    """Every rank's share, merged (a collective: call it on every rank, in the same order)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return merge([local])
    parts: list[SampleOutcomes | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return merge(parts)
