"""`dplbench data synth`: a learnable synthetic benchmark in the CoOp layout."""

from __future__ import annotations

import json
import random

import torch
from PIL import Image
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.data.convert import convert
from dplbench.data.meta import load_meta
from dplbench.data.synth import WORDS, class_image


def test_synth_cli_writes_coop_split_and_converts(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(tmp_path),
            "--classes",
            "6",
            "--per-class",
            "10",
            "--size",
            "24",
        ],
    )
    assert res.exit_code == 0, res.output
    split = json.loads((tmp_path / "synthetic" / "split_zhou_Synthetic.json").read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 36, "val": 12, "test": 12}
    rel, label, name = split["test"][0]
    assert (
        name == WORDS[label]
        and Image.open(tmp_path / "synthetic" / "images" / rel).format == "JPEG"
    )
    [r] = convert(tmp_path, ["synthetic"], tmp_path / "s", show_progress=False)
    assert r.counts == {"train": 36, "val": 12, "test": 12}
    assert load_meta(tmp_path / "s", "synthetic").classnames == WORDS[:6]


def test_synthetic_classes_are_separable_by_mean_colour():
    rng, n = random.Random(0), 10

    def feat(label):
        x = torch.tensor(list(class_image(label, n, 32, rng).getdata()), dtype=torch.float32)
        return x.mean(0)

    centroids = torch.stack([torch.stack([feat(c) for _ in range(8)]).mean(0) for c in range(n)])
    hits = sum(
        int(torch.cdist(feat(c)[None], centroids).argmin()) == c for c in range(n) for _ in range(5)
    )
    assert hits / (5 * n) >= 0.8
