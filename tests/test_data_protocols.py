"""Protocols of docs/protocols.md §2 against references written here from the spec."""

from __future__ import annotations

import json
import math
import random

import pytest

from dplbench.data.convert import ConvertOptions, convert
from dplbench.data.fewshot import load_selection, make_fewshot
from dplbench.data.protocols import (
    fewshot_sample,
    label_map,
    longtail_counts,
    longtail_select,
    subsample_labels,
)
from dplbench.data.synth import make_mini_coop_tree
from dplbench.data.tario import iter_samples
from dplbench.data.view import DatasetView


def reference_fewshot(train, val, k, seed):
    """docs/protocols.md §2, written independently: fresh Random(seed), labels in first-appearance
    order, sample(k) if >= k else all; then val with min(k, 4), same rng."""
    rng = random.Random(seed)

    def draw(items, n):
        labels, by_label = [], {}
        for it in items:
            if it[1] not in by_label:
                labels.append(it[1])
                by_label[it[1]] = []
            by_label[it[1]].append(it)
        out = []
        for lab in labels:
            group = by_label[lab]
            out += rng.sample(group, n) if len(group) >= n else list(group)
        return out

    return draw(train, k), draw(val, min(k, 4))


def _random_split(seed, n_items, n_classes):
    rng = random.Random(seed)
    return [(f"img{i}.jpg", rng.randrange(n_classes), "x") for i in range(n_items)]


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fewshot_matches_reference(k, seed):
    train, val = _random_split(100 + seed, 300, 20), _random_split(200 + seed, 90, 20)
    assert fewshot_sample(train, val, k, seed) == reference_fewshot(train, val, k, seed)


def test_fewshot_small_class_keeps_all_and_val_caps_at_4():
    train = [("a0", 0, "a"), ("b0", 1, "b"), ("a1", 0, "a"), ("a2", 0, "a")]
    val = [(f"v{i}", i % 2, "") for i in range(20)]
    tr, va = fewshot_sample(train, val, 2, seed=5)
    assert [t[1] for t in tr] == [0, 0, 1]  # label 0 first (first appearance), 1 has only one
    assert ("b0", 1, "b") in tr
    assert [v[1] for v in va] == [0, 0, 1, 1]  # min(2, 4) = 2 per label
    _, va16 = fewshot_sample(train, val, 16, seed=5)
    assert len(va16) == 8  # min(16, 4) = 4 per label


def test_base_novel_rule():
    assert subsample_labels(range(37), "base") == list(range(19))
    assert subsample_labels(range(37), "novel") == list(range(19, 37))
    assert subsample_labels([5, 1, 3], "base") == [1, 3]  # sorted, ceil(3/2) = 2
    assert label_map([5, 1, 3], "novel") == {5: 0}
    assert label_map(range(4), "all") == {0: 0, 1: 1, 2: 2, 3: 3}
    with pytest.raises(ValueError):
        subsample_labels(range(3), "half")


def test_longtail_counts_by_hand():
    # C = 5 classes, n_max = 100, r = 10: 100 * 10^(-i/4) = 100, 56.2, 31.6, 17.8, 10, rounded
    # up as the DPL release does (math.ceil)
    counts = {0: 100, 1: 100, 2: 100, 3: 100, 4: 100}
    assert longtail_counts(counts, 10) == {0: 100, 1: 57, 2: 32, 3: 18, 4: 10}
    # decreasing original count decides the order; a class never keeps more than it has,
    # and at least one
    counts = {0: 3, 1: 50, 2: 20}  # order 1, 2, 0; keeps 50, ceil(50*1000^-0.5 = 1.58) = 2, ...
    assert longtail_counts(counts, 1000) == {1: 50, 2: 2, 0: 1}
    assert longtail_counts({7: 9}, 10) == {7: 9}
    # ties keep the order of first appearance (Counter.most_common), not label order
    assert list(longtail_counts({3: 10, 1: 10, 2: 10}, 10)) == [3, 1, 2]
    assert longtail_counts({3: 10, 1: 10, 2: 10}, 10) == {3: 10, 1: 4, 2: 1}


def test_longtail_select_is_seeded_and_in_source_order():
    items = [(f"k{i}", i % 4, "") for i in range(40)]  # 10 per class
    a = longtail_select(items, [0, 1], 10, seed=1)
    assert a == longtail_select(items, [0, 1], 10, seed=1)
    assert a != longtail_select(items, [0, 1], 10, seed=2)
    per = [sum(1 for it in a if it[1] == c) for c in range(4)]
    assert per == [10, 1, 0, 0]  # C = 2: 10, 10 * 10^-1 = 1
    assert a == sorted(a, key=lambda it: int(it[0][1:]))


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    base = tmp_path_factory.mktemp("protocols")
    data = make_mini_coop_tree(base / "data", per_class=3, datasets=["oxford_pets", "imagenet"])
    shards = base / "shards"
    convert(
        data,
        ["oxford_pets", "imagenet"],
        shards,
        ConvertOptions(samples_per_shard=16),
        show_progress=False,
    )
    return data, shards


def test_fewshot_sets_are_the_coop_draw_of_the_split_file(pets):
    data, shards = pets
    make_fewshot(shards, ["oxford_pets"], [2], [1, 3], samples_per_shard=10, show_progress=False)
    split = json.loads((data / "oxford_pets" / "split_zhou_OxfordPets.json").read_text())
    # keys are "<split>_<index in the split file>"
    tr = [(f"train_{i:07d}", e[1]) for i, e in enumerate(split["train"])]
    va = [(f"val_{i:07d}", e[1]) for i, e in enumerate(split["val"])]
    for seed in (1, 3):
        ref_tr, ref_va = reference_fewshot(tr, va, 2, seed)
        sel = load_selection(shards, "oxford_pets", f"k2_s{seed}")
        assert sel.keys == {"train": [k for k, _ in ref_tr], "val": [k for k, _ in ref_va]}
        d = shards / "oxford_pets" / "fewshot" / f"k2_s{seed}"
        got = [
            s["__key__"] for p in sorted((d / "train").glob("*.tar")) for s in iter_samples(str(p))
        ]
        assert sorted(got) == sorted(sel.keys["train"]) and len(got) == 74
        assert (d / "train" / "nshards.txt").read_text() == f"{math.ceil(74 / 10)}\n"


def test_fewshot_view_and_novel_relabel(pets):
    _, shards = pets
    make_fewshot(shards, ["oxford_pets"], [2], [1], show_progress=False)
    v = DatasetView.open(shards, "oxford_pets", "train", shots=2, seed=1, subsample="novel")
    assert v.source == "fewshot/k2_s1/train"
    assert v.num_samples == 18 * 2 and len(v.classnames) == 18
    assert DatasetView.open(shards, "oxford_pets", "test", shots=2, seed=1).num_samples == 37 * 3


def test_imagenet_fewshot_has_no_val_list(pets):
    _, shards = pets
    out = make_fewshot(shards, ["imagenet"], [1], [1], show_progress=False)
    assert list(out["imagenet"][0].keys) == ["train"]
    assert DatasetView.open(shards, "imagenet", "val", shots=1, seed=1).source == "test"


def test_longtail_set(pets):
    _, shards = pets
    make_fewshot(shards, ["oxford_pets"], [], [1], imbalance=3, show_progress=False)
    v = DatasetView.open(shards, "oxford_pets", "train", seed=1, subsample="base", imbalance=3)
    sel = load_selection(shards, "oxford_pets", "lt3_s1")
    counts = sel.splits["train"].label_counts
    # 19 base classes with 3 images, first seen in label order: class i keeps
    # ceil(max(3 * 3^(-i/18), 1))
    assert counts[:19] == [math.ceil(max(3 * 3 ** (-i / 18), 1)) for i in range(19)]
    assert sum(counts[19:]) == 0 and v.num_samples == sum(counts)


def test_fewshot_subset_written_alone_and_preferred_by_the_view(pets):
    _, shards = pets
    out = make_fewshot(shards, ["oxford_pets"], [1], [2], subsample="base", show_progress=False)
    sel = out["oxford_pets"][0]
    assert sel.name == "k1_s2_base" and sel.splits["train"].label_counts[19:] == [0] * 18
    full = make_fewshot(shards, ["oxford_pets"], [1], [2], show_progress=False)["oxford_pets"][0]
    base_keys = [k for k in full.keys["train"] if k in set(sel.keys["train"])]
    assert sel.keys["train"] == base_keys and len(base_keys) == 19  # same draw, base classes
    v = DatasetView.open(shards, "oxford_pets", "train", shots=1, seed=2, subsample="base")
    assert v.source == "fewshot/k1_s2_base/train" and v.num_samples == 19
