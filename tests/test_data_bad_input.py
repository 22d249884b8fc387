"""Bad input: missing/undecodable images, absent folders, corrupt shards, interrupted and
repeated conversions."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

import dplbench.data.convert as convert_mod
from dplbench.cli import app
from dplbench.data.convert import ConvertOptions, convert
from dplbench.data.epochs import train_loader
from dplbench.data.errors import CorruptShardError, DataError, MissingImagesError
from dplbench.data.meta import converted_datasets, load_meta
from dplbench.data.shards import eval_loader
from dplbench.data.synth import make_mini_coop_tree
from dplbench.data.tario import iter_samples, write_tar
from dplbench.data.transforms import ViewConfig
from dplbench.data.view import DatasetView

OPTS = ConvertOptions(samples_per_shard=4)
EVAL = ViewConfig(32, "test")


@pytest.fixture
def dtd(tmp_path):
    """Mini dtd: 3 classes x 2 images per split; the split file's train paths."""
    data = make_mini_coop_tree(tmp_path / "data", datasets=["dtd"])
    split = json.loads((data / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    return data, tmp_path / "shards", [e[0] for e in split["train"]]


def test_missing_images_error_with_count_and_first_paths(dtd):
    data, out, train = dtd
    for rel in train[:3]:
        (data / "dtd" / "images" / rel).unlink()
    with pytest.raises(MissingImagesError) as e:
        convert(data, ["dtd"], out, OPTS, show_progress=False)
    msg = str(e.value)
    assert "3 listed image(s) missing" in msg and f"images/{train[0]}" in msg
    assert not (out / "dtd").exists()


def test_skip_missing_records_counts(dtd):
    data, out, train = dtd
    (data / "dtd" / "images" / train[0]).unlink()
    (data / "dtd" / "images" / train[1]).write_bytes(b"not a jpeg")  # undecodable
    [r] = convert(data, ["dtd"], out, ConvertOptions(4, skip_missing=True), show_progress=False)
    assert r.skipped == 2 and r.counts == {"train": 4, "val": 6, "test": 6}
    meta = load_meta(out, "dtd")
    assert meta.skipped["count"] == 2 and meta.splits["train"].skipped == 2
    reasons = dict(meta.skipped["first"])
    assert reasons[f"images/{train[0]}"] == "missing"
    assert reasons[f"images/{train[1]}"].startswith("undecodable")


def test_undecodable_without_skip_fails_and_leaves_nothing(dtd):
    data, out, train = dtd
    (data / "dtd" / "images" / train[4]).write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(MissingImagesError, match="1 listed image"):
        convert(data, ["dtd"], out, OPTS, show_progress=False)
    assert not (out / "dtd").exists() and list(out.glob(".dtd.tmp-*")) == []


def test_absent_dataset_folder_cli_exit_2_one_line(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "data",
            "convert",
            "--root",
            str(tmp_path),
            "--datasets",
            "oxford_pets",
            "--out",
            str(tmp_path / "s"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "oxford_pets") in lines[0]


def test_wrong_layout_names_expected_path(tmp_path):
    (tmp_path / "fgvc_aircraft" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=str(tmp_path / "fgvc_aircraft" / "variants.txt")):
        convert(tmp_path, ["fgvc_aircraft"], tmp_path / "s", show_progress=False)


def test_unknown_dataset_cli_exit_2(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "data",
            "convert",
            "--root",
            str(tmp_path),
            "--datasets",
            "mnist",
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert res.exit_code == 2 and "unknown dataset 'mnist'" in res.output


def test_interrupted_convert_leaves_no_complete_looking_output(dtd, monkeypatch):
    data, out, _ = dtd
    calls = []
    real = convert_mod.write_shard

    def failing(task):
        calls.append(task.rel)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed mid-way
        return real(task)

    monkeypatch.setattr(convert_mod, "write_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        convert(data, ["dtd"], out, OPTS, show_progress=False)
    assert len(calls) == 3
    assert not (out / "dtd").exists() and converted_datasets(out) == []
    with pytest.raises(DataError, match="dplbench.json"):
        DatasetView.open(out, "dtd", "test")


def test_killed_convert_tmp_is_not_a_dataset_and_is_reclaimed(dtd):
    data, out, _ = dtd
    stale = out / ".dtd.tmp-deadbeef" / "train"
    stale.mkdir(parents=True)
    assert converted_datasets(out) == []
    convert(data, ["dtd"], out, OPTS, show_progress=False)
    assert converted_datasets(out) == ["dtd"] and not stale.exists()


def test_rerun_on_complete_output_is_a_noop(dtd):
    data, out, train = dtd
    convert(data, ["dtd"], out, OPTS, show_progress=False)
    files = [p for p in (out / "dtd").rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    [r] = convert(data, ["dtd"], out, OPTS, show_progress=False)
    assert r.status == "up-to-date"
    assert {p: p.stat().st_mtime_ns for p in files} == before
    # a changed split file (its checksum) converts again
    split_file = data / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(split_file.read_text())
    split["train"] = split["train"][:-1]
    split_file.write_text(json.dumps(split))
    [r] = convert(data, ["dtd"], out, OPTS, show_progress=False)
    assert r.status == "converted" and r.counts["train"] == 5


def _corrupt_image(shard, key_index=1):
    """Rewrite `shard` with one sample's image bytes replaced; returns that key."""
    samples = list(iter_samples(str(shard)))
    samples[key_index]["jpg"] = b"\xff\xd8\xff garbage"
    write_tar(shard, samples)
    return samples[key_index]["__key__"]


def test_corrupt_image_error_names_shard_and_key(dtd):
    data, out, _ = dtd
    convert(data, ["dtd"], out, OPTS, show_progress=False)
    shard = out / "dtd" / "test" / "1.tar"
    key = _corrupt_image(shard)
    view = DatasetView.open(out, "dtd", "test")
    with pytest.raises(CorruptShardError) as e:
        list(eval_loader(view, 2, EVAL))
    assert str(shard) in str(e.value) and key in str(e.value)
    loader = eval_loader(view, 2, EVAL, on_error="skip")
    assert sum(len(b["key"]) for b in loader) == 5 and loader.skipped.value == 1


def test_truncated_shard_raises_or_counts_unread_samples(dtd):
    data, out, _ = dtd
    convert(data, ["dtd"], out, OPTS, show_progress=False)
    shard = out / "dtd" / "test" / "0.tar"  # 4 samples
    first_key = next(iter_samples(str(shard)))["__key__"]
    with open(shard, "r+b") as f:
        f.truncate(int(os.path.getsize(shard) * 0.45))
    view = DatasetView.open(out, "dtd", "test")
    with pytest.raises(CorruptShardError, match=str(shard)) as e:
        list(eval_loader(view, 2, EVAL))
    assert e.value.key is not None and e.value.key.startswith("test_")
    loader = eval_loader(view, 2, EVAL, num_workers=2, rank=0, world_size=1, on_error="skip")
    got = sum(len(b["key"]) for b in loader)
    assert got + loader.skipped.value == 6 and loader.skipped.value >= 2
    assert first_key  # the shard did have samples before truncation


def test_training_skips_corrupt_shard_and_counts(dtd):
    data, out, _ = dtd
    convert(data, ["dtd"], out, OPTS, show_progress=False)
    _corrupt_image(out / "dtd" / "train" / "0.tar", 0)
    view = DatasetView.open(out, "dtd", "train")
    with pytest.raises(CorruptShardError):
        list(train_loader(view, 2, ViewConfig(32), seed=0))
    loader = train_loader(view, 2, ViewConfig(32), seed=0, on_error="skip")
    assert len(list(loader)) == loader.num_batches == 3 and loader.skipped.value >= 1


def test_verify_reports_problems_exit_1(dtd):
    data, out, _ = dtd
    convert(data, ["dtd"], out, OPTS, show_progress=False)
    _corrupt_image(out / "dtd" / "val" / "0.tar")
    os.remove(out / "dtd" / "test" / "1.tar")
    res = CliRunner().invoke(app, ["data", "verify", str(out)])
    assert res.exit_code == 1
    assert "undecodable" in res.output and "test/1.tar missing" in res.output
    shutil.rmtree(out / "dtd")
    res = CliRunner().invoke(app, ["data", "verify", str(out), "--datasets", "dtd"])
    assert res.exit_code == 1 and "dplbench.json" in res.output


@pytest.mark.parametrize("bad", ["../../etc/passwd.tar", "/abs/0.tar", "s3://b/0.tar", "a/../../x"])
def test_shard_paths_in_metadata_cannot_leave_the_dataset_folder(dtd, bad):
    data, out, _ = dtd
    convert(data, ["dtd"], out, OPTS, show_progress=False)
    meta_file = out / "dtd" / "dplbench.json"
    meta = json.loads(meta_file.read_text())
    meta["splits"]["test"]["shards"][0] = bad
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="leaves its dataset folder") as e:
        DatasetView.open(out, "dtd", "test")
    assert str(meta_file) in str(e.value)
