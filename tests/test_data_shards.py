"""Readers: equal training batches per rank, exact single-pass evaluation, relabelled views."""

from __future__ import annotations

import pytest
import torch

from dplbench.data.convert import ConvertOptions, convert
from dplbench.data.shards import all_reduce_counts, eval_loader, train_loader
from dplbench.data.synth import make_mini_coop_tree
from dplbench.data.tario import iter_samples, join, readable
from dplbench.data.transforms import ViewConfig
from dplbench.data.view import DatasetView

SIZE = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    data = make_mini_coop_tree(base / "data", per_class=2, size=20, datasets=["oxford_pets"])
    out = base / "shards"
    # 74 samples per split, 7 per shard -> 11 shards (>= 2 ranks x 2 workers)
    convert(data, ["oxford_pets"], out, ConvertOptions(samples_per_shard=7), show_progress=False)
    return out


def _eval_keys(view, world, workers, batch=5):
    per_rank = []
    for rank in range(world):
        keys = []
        loader = eval_loader(view, batch, ViewConfig(SIZE, "test"), workers, rank, world)
        for b in loader:
            assert b["image"].shape[1:] == (3, SIZE, SIZE)
            assert b["label"].dtype == torch.long and len(b["key"]) == len(b["label"])
            keys += b["key"]
        per_rank.append(keys)
    return per_rank


@pytest.mark.parametrize("subsample", ["all", "novel"])
def test_eval_covers_every_sample_once_split_by_shards(shards, subsample):
    view = DatasetView.open(shards, "oxford_pets", "test", subsample=subsample)
    assert len(view.shard_urls) >= 2 * 2
    per_rank = _eval_keys(view, world=2, workers=2)
    keys = [k for r in per_rank for k in r]
    assert len(keys) == len(set(keys)) == view.num_samples == (74 if subsample == "all" else 36)
    assert all(per_rank)  # both ranks got work


def test_eval_fewer_shards_than_slots_falls_back_to_modulo(tmp_path):
    data = make_mini_coop_tree(tmp_path / "data", datasets=["dtd"])
    convert(data, ["dtd"], tmp_path / "s", ConvertOptions(samples_per_shard=4), show_progress=False)
    view = DatasetView.open(tmp_path / "s", "dtd", "test")
    assert len(view.shard_urls) == 2  # 6 samples / 4 < 2 ranks x 2 workers
    per_rank = _eval_keys(view, world=2, workers=2, batch=2)
    keys = [k for r in per_rank for k in r]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 6
    # in-process reading (0 workers) of 3 ranks gives the same union
    keys3 = [k for r in _eval_keys(view, world=3, workers=0) for k in r]
    assert sorted(keys3) == sorted(keys)


def test_train_equal_batches_per_rank_and_relabel(shards):
    view = DatasetView.open(shards, "oxford_pets", "train", subsample="novel")
    batch, world = 4, 2
    counts = []
    for rank in range(world):
        loader = train_loader(
            view,
            batch,
            ViewConfig(SIZE, with_clean=True),
            num_workers=2,
            rank=rank,
            world_size=world,
            seed=3,
        )
        # 36 novel samples / (4 * 2) -> ceil 5 batches, rounded up to 2 workers -> 6
        assert loader.num_batches == 6
        got = list(loader)
        counts.append(len(got))
        for b in got:
            assert b["image"].shape == (batch, 3, SIZE, SIZE) == b["clean"].shape
            assert b["label"].min() >= 0 and b["label"].max() < 18
    assert counts == [6, 6]


def test_train_is_seeded_and_epochs_differ(shards):
    view = DatasetView.open(shards, "oxford_pets", "train")

    def keys(loader):
        return [k for b in loader for k in b["key"]]

    a = train_loader(view, 4, ViewConfig(SIZE), seed=7)
    b = train_loader(view, 4, ViewConfig(SIZE), seed=7)
    first = keys(a)
    assert first == keys(b) and len(first) == 19 * 4  # ceil(74 / 4) batches of 4
    assert keys(a) != first  # the next epoch draws anew


def test_all_reduce_counts_without_process_group():
    assert all_reduce_counts(3, 10) == (3, 10)


def test_pipe_urls_read_like_local_paths(shards):
    path = DatasetView.open(shards, "oxford_pets", "test").shard_urls[0]
    local = [s["__key__"] for s in iter_samples(path)]
    assert [s["__key__"] for s in iter_samples(f"pipe:cat {path}")] == local and local
    assert readable("s3://b/x/0.tar") == "pipe:aws s3 cp s3://b/x/0.tar -"
    assert readable("gs://b/x/0.tar") == "pipe:gsutil cat gs://b/x/0.tar"
    assert join("s3://b/root/", "pets", "test/0.tar") == "s3://b/root/pets/test/0.tar"
