"""The training reader of a fused group: every member's exact epochs (data/epochs.py) through one
loader pool, each step's batches of all members in one go.

Each member reads its own training set in its own order (its seed: its few-shot set, its
permutation, its augmentation), exactly as its solo run's reader does; members that agree on the
set, the seed and the view share their batches, decoded once. One DataLoader serves the group
(`--loader-workers` workers, not a share per member); a batch item is the union of the members'
samples of one step, and comes back as one batch per data key.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from dplbench.data.epochs import EpochBatches, EpochDataset, _collate, index_view
from dplbench.data.shards import ON_ERROR, SharedCounter
from dplbench.data.transforms import SampleTransform, ViewConfig
from dplbench.data.view import DatasetView


@dataclass(frozen=True)
class MemberData:
    """What decides a member's batches: its training view, its seed and its view config."""

    view: DatasetView
    seed: int
    key: Hashable  # equal keys: equal batches


class _GroupSampler(torch.utils.data.Sampler):
    """Per step, the (data key, epoch, position) items of every source still in its epoch."""

    def __init__(self, samplers: dict[Hashable, EpochBatches]) -> None:
        self.samplers = samplers
        self.keys: tuple[Hashable, ...] = tuple(samplers)

    def set_epoch(self, epoch: int, keys: Sequence[Hashable]) -> None:
        self.keys = tuple(keys)
        for s in self.samplers.values():
            s.set_epoch(epoch)

    def __len__(self) -> int:
        return max((len(self.samplers[k]) for k in self.keys), default=0)

    def __iter__(self):
        its = {k: iter(self.samplers[k]) for k in self.keys}
        while its:
            step = []
            for k in list(its):
                try:
                    step += [(k, e, p) for e, p in next(its[k])]
                except StopIteration:
                    del its[k]
            if step:
                yield step


class _GroupDataset(torch.utils.data.Dataset):
    def __init__(self, datasets: dict[Hashable, EpochDataset]) -> None:
        self.datasets = datasets

    def __getitem__(self, item):
        key, epoch, pos = item
        return key, self.datasets[key][(epoch, pos)]  # None: skipped as corrupt


def _collate_group(items):
    """One step's samples -> {data key: batch, or None when all its samples were corrupt}."""
    by_key: dict = {}
    for key, sample in items:
        by_key.setdefault(key, []).append(sample)
    return {k: _collate(v) for k, v in by_key.items()}


class GroupLoader:
    """The group's reader: `set_epoch(e, members)`, then iterate steps of {member: batch}."""

    def __init__(
        self,
        members: Sequence[MemberData],
        batch_size: int,
        views: ViewConfig,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        on_error: str = "raise",
        last_batch: str = "dassl",
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.skipped = SharedCounter()
        self.member_keys = [m.key for m in members]
        samplers, datasets = {}, {}
        transform = SampleTransform(views)
        for m in members:
            if m.key in samplers:  # the same set, seed and view: its batches already
                continue
            refs = index_view(m.view, on_error, self.skipped)
            samplers[m.key] = EpochBatches(len(refs), batch_size, rank, world_size, m.seed,
                                           last_batch)  # fmt: skip
            datasets[m.key] = EpochDataset(m.view, refs, transform, m.seed, on_error, self.skipped)
        self.sampler = _GroupSampler(samplers)
        self.num_batches = {k: len(s) for k, s in samplers.items()}
        # Its own generator: a DataLoader draws its workers' base seed from the global one
        # (samples reseed from (seed, epoch, position) anyway).
        self.loader = torch.utils.data.DataLoader(
            _GroupDataset(datasets),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_collate_group,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(members[0].seed),
        )

    def batches_per_epoch(self, member: int) -> int:
        return self.num_batches[self.member_keys[member]]

    def set_epoch(self, epoch: int, members: Sequence[int]) -> None:
        self.sampler.set_epoch(epoch, dict.fromkeys(self.member_keys[k] for k in members))

    def steps(self, members: Sequence[int]):
        """Each step's batches of `members` (those of this epoch): {member: batch or None}; a
        member whose epoch has ended is absent."""
        for by_key in self.loader:
            yield {k: by_key[self.member_keys[k]] for k in members
                   if self.member_keys[k] in by_key}  # fmt: skip
