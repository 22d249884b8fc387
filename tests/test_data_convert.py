"""Converting a mini $DATA of all 15 benchmarks: counts, labels, names, relabels, layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.data.convert import ConvertOptions, convert
from dplbench.data.datasets import BENCHMARKS, DATASETS, resolve_datasets
from dplbench.data.meta import load_meta
from dplbench.data.synth import class_name, make_mini_coop_tree
from dplbench.data.tario import iter_samples
from dplbench.data.verify import verify
from dplbench.data.view import DatasetView

# make_mini_coop_tree defaults: 3 classes (real count when <= 40), 2 images per class and split.
PER = 2
EXPECTED_CLASSES = {k: 3 for k in BENCHMARKS} | {
    "oxford_pets": 37,
    "eurosat": 10,
    "imagenet": 6,  # 2 * classes wnids
    "imagenetv2": 6,
    "imagenet_sketch": 6,
    "imagenet_a": 3,  # wnids 1, 3, 5
    "imagenet_r": 3,
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("convert")
    data = make_mini_coop_tree(base / "data")
    convert(
        data,
        list(BENCHMARKS),
        base / "shards",
        ConvertOptions(samples_per_shard=5),
        workers=2,
        show_progress=False,
    )
    return data, base / "shards"


def test_registry_has_the_15_plus_synthetic_apart():
    assert len(BENCHMARKS) == 15
    assert resolve_datasets("all") == list(BENCHMARKS)
    assert "synthetic" in DATASETS and "synthetic" not in BENCHMARKS
    assert resolve_datasets("dtd,synthetic") == ["dtd", "synthetic"]
    templates = {k: DATASETS.get(k).template for k in BENCHMARKS}
    assert templates["dtd"] == "{} texture."
    assert templates["eurosat"] == "a centered satellite photo of {}."
    assert templates["sun397"] == "a photo of a {}."


def test_counts_per_split(converted):
    _, shards = converted
    for key in BENCHMARKS:
        meta = load_meta(shards, key)
        n = EXPECTED_CLASSES[key]
        assert len(meta.classnames) == n, key
        counts = {s: m.count for s, m in meta.splits.items()}
        if key == "imagenet":
            assert counts == {"train": n * PER, "test": n * PER}
            assert meta.aliases == {"val": "test"}
        elif key in ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
            assert counts == {"test": n * PER}, key
        else:
            assert counts == {"train": n * PER, "val": n * PER, "test": n * PER}, key
        for m in meta.splits.values():
            assert m.label_counts == [PER] * n, key


def test_layout_matches_clip_benchmark(converted):
    _, shards = converted
    d = shards / "oxford_pets"
    assert (d / "classnames.txt").read_text().splitlines() == load_meta(
        shards, "oxford_pets"
    ).classnames
    assert (d / "zeroshot_classification_templates.txt").read_text() == (
        "a photo of a {c}, a type of pet.\n"
    )
    # 74 samples, 5 per shard -> 15 shards named 0.tar .. 14.tar
    assert (d / "train" / "nshards.txt").read_text() == "15\n"
    assert sorted(p.name for p in (d / "train").glob("*.tar")) == sorted(
        f"{i}.tar" for i in range(15)
    )
    with tarfile.open(d / "train" / "0.tar") as tf:
        names = tf.getnames()
    assert len(names) == 5 * 3 and {n.split(".", 1)[1] for n in names} == {"jpg", "cls", "txt"}
    meta = json.loads((d / "dplbench.json").read_text())
    assert len(meta["source"]["files"]["oxford_pets/split_zhou_OxfordPets.json"]) == 64
    assert meta["splits"]["train"]["shards"][0] == "train/0.tar"
    index = pq.read_table(d / "index.parquet", use_threads=False)
    assert index.num_rows == 3 * 74
    assert set(index.column_names) >= {"key", "split", "label", "classname", "shard"}


def test_class_names_underscores_become_spaces(converted):
    _, shards = converted
    meta = load_meta(shards, "oxford_pets")
    assert meta.raw_classnames[20] == "sea_lion" and meta.classnames[20] == "sea lion"
    aircraft = load_meta(shards, "fgvc_aircraft").classnames
    assert aircraft[0] == "Apple 700-200"  # variant names keep their spaces


def test_base_novel_split_37_classes(converted):
    _, shards = converted
    base = DatasetView.open(shards, "oxford_pets", "test", subsample="base")
    novel = DatasetView.open(shards, "oxford_pets", "test", subsample="novel")
    names = load_meta(shards, "oxford_pets").classnames
    assert len(base.classnames) == 19 and len(novel.classnames) == 18
    assert base.label_map == {i: i for i in range(19)}
    assert novel.label_map == {19 + i: i for i in range(18)}
    assert novel.classnames == names[19:]
    assert (base.num_samples, novel.num_samples) == (19 * PER, 18 * PER)


def test_imagenet_a_keeps_its_classes_relabelled_in_folder_order(converted):
    data, shards = converted
    meta = load_meta(shards, "imagenet_a")
    # the mini tree puts ImageNet wnids 1, 3, 5 there: labels 0, 1, 2 in sorted folder order
    assert meta.classnames == [class_name(1), class_name(3), class_name(5)]
    index = pq.read_table(shards / "imagenet_a" / "index.parquet", use_threads=False).to_pylist()
    wnids = sorted(p.name for p in (data / "imagenet-adversarial" / "imagenet-a").iterdir())
    for row in index:
        assert row["label"] == wnids.index(row["src"].split("/")[1])
        assert row["classname"] == meta.classnames[row["label"]]


def test_imagenetv2_names_by_index_and_extension_kept(converted):
    _, shards = converted
    v2 = load_meta(shards, "imagenetv2")
    assert v2.classnames == load_meta(shards, "imagenet").classnames
    rows = pq.read_table(shards / "imagenetv2" / "index.parquet", use_threads=False).to_pylist()
    assert all(r["label"] == int(r["src"].split("/")[1]) for r in rows)
    with tarfile.open(shards / "imagenetv2" / "test" / "0.tar") as tf:
        assert any(n.endswith(".png") for n in tf.getnames())


def test_imagenet_val_is_its_test(converted):
    _, shards = converted
    val = DatasetView.open(shards, "imagenet", "val")
    test = DatasetView.open(shards, "imagenet", "test")
    assert val.source == "test" and val.shard_urls == test.shard_urls


def test_verify_is_clean(converted):
    _, shards = converted
    assert verify(shards, list(BENCHMARKS)) == {k: [] for k in BENCHMARKS}


def test_cli_convert_gives_identical_output(converted, tmp_path):
    data, shards = converted
    out = tmp_path / "cli_shards"
    res = CliRunner().invoke(
        app,
        [
            "data",
            "convert",
            "--root",
            str(data),
            "--datasets",
            "all",
            "--out",
            str(out),
            "--samples-per-shard",
            "5",
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "imagenet_r: converted" in res.output
    for key in BENCHMARKS:
        for f in sorted((shards / key).rglob("*")):
            if f.is_file():
                assert (out / key / f.relative_to(shards / key)).read_bytes() == f.read_bytes(), f
    res = CliRunner().invoke(app, ["data", "verify", str(out)])
    assert res.exit_code == 0 and res.output.count(": ok") == 15
    res = CliRunner().invoke(app, ["data", "ls", str(out)])
    assert res.exit_code == 0 and "oxford_pets" in res.output and "=test" in res.output


def test_max_side_reencodes(tmp_path):
    data = make_mini_coop_tree(tmp_path / "data", size=40, datasets=["dtd"])
    convert(data, ["dtd"], tmp_path / "s", ConvertOptions(max_side=16), show_progress=False)
    sample = next(iter_samples(str(tmp_path / "s" / "dtd" / "test" / "0.tar")))
    assert Image.open(io.BytesIO(sample["jpg"])).size == (16, 16)
    assert Path(tmp_path / "s" / "dtd" / "dplbench.json").is_file()
