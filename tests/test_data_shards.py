"""Readers: exact training epochs, exact single-pass evaluation, relabelled views."""

from __future__ import annotations

import pytest
import torch

from dplbench.data.convert import ConvertOptions, convert
from dplbench.data.epochs import EpochBatches, train_loader
from dplbench.data.shards import all_reduce_counts, eval_loader
from dplbench.data.synth import make_mini_coop_tree
from dplbench.data.tario import iter_samples
from dplbench.data.transforms import ViewConfig
from dplbench.data.view import DatasetView
from dplbench.storage import join

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


def _epoch_keys(view, batch, world, workers, epoch, last_batch="dassl"):
    """Per rank, the keys of one epoch's batches (lists)."""
    out = []
    for rank in range(world):
        loader = train_loader(
            view, batch, ViewConfig(SIZE), workers, rank, world, 3, last_batch=last_batch
        )
        loader.set_epoch(epoch)
        batches = [b["key"] for b in loader]
        assert len(batches) == loader.num_batches
        out.append(batches)
    return out


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_train_epochs_are_exact_permutations(shards, world, workers):
    view = DatasetView.open(shards, "oxford_pets", "train", subsample="novel")
    n, batch = view.num_samples, 4  # 36 novel samples
    previous = None
    for epoch in (0, 1):
        per_rank = _epoch_keys(view, batch, world, workers, epoch)
        assert len({len(b) for b in per_rank}) == 1  # equal batch counts: DDP never waits
        drawn = [k for batches in per_rank for b in batches for k in b]
        assert len(drawn) == len(set(drawn))  # each sample at most once
        share = n // world
        # Dassl: floor(share / B) full batches per rank; only that remainder is missed
        assert len(drawn) == world * (share // batch) * batch
        assert all(len(b) == batch for batches in per_rank for b in batches)
        assert drawn != previous  # a fresh permutation each epoch
        previous = drawn
    if workers == 2:  # the same order, and the same images, with 0 and 2 loader workers
        assert _epoch_keys(view, batch, world, 0, 1) == _epoch_keys(view, batch, world, 2, 1)
        a = train_loader(view, batch, ViewConfig(SIZE), 0, 0, world, 3)
        b = train_loader(view, batch, ViewConfig(SIZE), 2, 0, world, 3)
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))


@pytest.mark.parametrize("workers", [0, 1])
def test_reading_epochs_leaves_the_training_random_stream_alone(shards, workers):
    # The training's draws (dropout, IWTD, prompts) come from the global generator; a loader that
    # drew its workers' seed there would shift them by epoch and by --loader-workers.
    view = DatasetView.open(shards, "oxford_pets", "train", subsample="novel")
    loader = train_loader(view, 4, ViewConfig(SIZE), workers, 0, 1, 3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for epoch in (0, 1, 2):
        loader.set_epoch(epoch)
        assert sum(1 for _ in loader) == loader.num_batches
    assert torch.equal(torch.get_rng_state(), before)


def test_train_last_batch_rules_and_relabel(shards):
    view = DatasetView.open(shards, "oxford_pets", "train", subsample="novel")
    keep = _epoch_keys(view, 5, 1, 0, 0, last_batch="keep")[0]
    assert [len(b) for b in keep] == [5] * 7 + [1]  # DroPLe keeps the partial batch: ceil(36/5)
    assert sorted(k for b in keep for k in b) == sorted(set(k for b in keep for k in b))
    dassl = _epoch_keys(view, 5, 1, 0, 0)[0]
    assert [len(b) for b in dassl] == [5] * 7  # Dassl drops it: floor(36/5)
    assert [len(b) for b in _epoch_keys(view, 64, 1, 0, 0)[0]] == [36]  # n < B: one batch of n
    loader = train_loader(view, 4, ViewConfig(SIZE, with_clean=True), 0, 0, 1, 3)
    for b in loader:
        assert b["image"].shape == (4, 3, SIZE, SIZE) == b["clean"].shape
        assert b["label"].min() >= 0 and b["label"].max() < 18


def test_epoch_order_is_seeded_by_job_seed_and_epoch():
    a, b = EpochBatches(40, 8, 0, 1, 1, "dassl"), EpochBatches(40, 8, 0, 1, 1, "dassl")
    assert a.order(0) == b.order(0) and a.order(0) != a.order(1)
    assert EpochBatches(40, 8, 0, 1, 2, "dassl").order(0) != a.order(0)
    two = [EpochBatches(41, 8, r, 2, 1, "dassl").order(5) for r in (0, 1)]
    assert len(two[0]) == len(two[1]) == 20 and not set(two[0]) & set(two[1])


def test_all_reduce_counts_without_process_group():
    assert all_reduce_counts(3, 10) == (3, 10)


def test_pipe_urls_read_like_local_paths(shards):
    path = DatasetView.open(shards, "oxford_pets", "test").shard_urls[0]
    local = [s["__key__"] for s in iter_samples(path)]
    assert [s["__key__"] for s in iter_samples(f"pipe:cat {path}")] == local and local
    assert join("s3://b/root/", "pets", "test/0.tar") == "s3://b/root/pets/test/0.tar"
