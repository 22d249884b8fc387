"""Conversion as Ray tasks writes the same shards as local processes."""

from __future__ import annotations

import pytest

from dplbench.data.convert import ConvertOptions, convert
from dplbench.data.synth import make_mini_coop_tree


@pytest.mark.slow
@pytest.mark.cluster
def test_convert_with_ray_matches_local(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    data = make_mini_coop_tree(tmp_path / "data", datasets=["dtd", "imagenet", "imagenet_r"])
    keys, opts = ["dtd", "imagenet_r"], ConvertOptions(samples_per_shard=2)
    convert(data, keys, tmp_path / "local", opts, workers=2, show_progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        reports = convert(
            data, keys, tmp_path / "ray", opts, ray_address="auto", show_progress=False
        )
    finally:
        ray.shutdown()
    assert [r.counts for r in reports] == [{"train": 6, "val": 6, "test": 6}, {"test": 6}]
    local = sorted(p for p in (tmp_path / "local").rglob("*") if p.is_file())
    assert len(local) > 10
    for p in local:
        assert (tmp_path / "ray" / p.relative_to(tmp_path / "local")).read_bytes() == p.read_bytes()
