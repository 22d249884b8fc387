"""`DatasetView`: what a training or evaluation job reads from one dataset split.

Built from the converted metadata and protocols.py: which shards (the full split, or a few-shot
/ long-tail selection), which classes (all / base / novel) relabelled to 0..C-1, their
prompt-ready names and the dataset's template. The readers in shards.py take a view.

Rules: `shots`+`seed` select the few-shot set for `train` and `val`; `imbalance`+`seed` select
the long-tail set for `train` (with `subsample="base"`). `test` is always the full split, and
so is ImageNet's `val` (its test set). The runner can pass the same arguments for every split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dplbench import storage
from dplbench.data.errors import DataError
from dplbench.data.fewshot import load_selection, selection_name
from dplbench.data.meta import FEWSHOT_DIR, load_meta
from dplbench.data.protocols import label_map


@dataclass(frozen=True)
class DatasetView:
    dataset: str
    split: str  # as asked ("val" for ImageNet is served by "test")
    source: str  # "<split>" for the full split, or "fewshot/<selection>/<split>"
    subsample: str  # "all" | "base" | "novel"
    label_map: dict[int, int]  # original label -> label in this view (0..C-1)
    classnames: list[str]  # prompt-ready names, index = label in this view
    template: str  # hand-crafted template, "{}" is the class name
    num_samples: int  # samples in this view (after the class subset)
    shard_urls: list[str]
    shard_counts: list[int]  # samples per shard before the class subset

    @classmethod
    def open(
        cls,
        shards_root: str | Path,
        dataset: str,
        split: str,
        shots: int | None = None,
        seed: int | None = None,
        subsample: str = "all",
        imbalance: float | None = None,
    ) -> DatasetView:
        """The view of `dataset`/`split` under the protocol arguments (see module doc)."""
        meta = load_meta(shards_root, dataset)
        real = meta.resolve_split(split)
        lmap = label_map(range(len(meta.classnames)), subsample)
        base_url = storage.join(shards_root, dataset)
        shards, counts, label_counts = (
            meta.splits[real].shards,
            meta.splits[real].shard_counts,
            meta.splits[real].label_counts,
        )
        source = real
        selection = _selection_for(real, shots, seed, subsample, imbalance)
        if selection is not None:
            sel = _load_first(shards_root, dataset, selection)
            if real in sel.splits:
                m = sel.splits[real]
                shards, counts, label_counts = m.shards, m.shard_counts, m.label_counts
                base_url = storage.join(shards_root, dataset, FEWSHOT_DIR, sel.name)
                source = f"{FEWSHOT_DIR}/{sel.name}/{real}"
        return cls(
            dataset=dataset,
            split=split,
            source=source,
            subsample=subsample,
            label_map=lmap,
            classnames=[meta.classnames[old] for old in sorted(lmap)],
            template=meta.template,
            num_samples=sum(label_counts[old] for old in lmap),
            shard_urls=[storage.join(base_url, rel) for rel in shards],
            shard_counts=list(counts),
        )

    def prompts(self) -> list[str]:
        """The hand-crafted prompt of every class of the view."""
        return [self.template.format(name) for name in self.classnames]


def _selection_for(real, shots, seed, subsample, imbalance) -> list[str] | None:
    """Candidate selection names for this split, most specific first; None = full split."""
    if real == "test" or (shots is None and imbalance is None):
        return None
    if seed is None:
        raise DataError("few-shot and long-tail views need a seed")
    if imbalance is not None:
        if real != "train":
            return None
        if subsample != "base":
            raise DataError(f"the long-tail protocol trains on base classes, got {subsample!r}")
        return [selection_name(None, seed, imbalance)]
    names = [selection_name(shots, seed)]
    if subsample != "all":
        names.insert(0, selection_name(shots, seed, None, subsample))
    return names


def _load_first(shards_root, dataset, names):
    for name in names:
        try:
            return load_selection(shards_root, dataset, name)
        except (FileNotFoundError, OSError):
            continue
    raise DataError(
        f"{dataset}: no selection {' or '.join(names)} under "
        f"{storage.join(shards_root, dataset, FEWSHOT_DIR)} (run `dplbench data fewshot`)"
    )
