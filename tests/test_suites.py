"""Suites expand into jobs with stable ids; configs layer strictly."""

import pytest

from dplbench.data.datasets import DATASETS
from dplbench.errors import ConfigError
from dplbench.plan.config import parse_overrides
from dplbench.plan.suites import load_suite


def test_job_ids_are_stable_and_name_the_work_not_the_suite():
    a = load_suite("base2novel", {"datasets": ["caltech101"], "seeds": [1]})
    b = load_suite("all15", {"datasets": ["caltech101"], "seeds": [1]})
    assert [j.id for j in a.jobs] == [
        j.id for j in load_suite("base2novel", {"datasets": ["caltech101"], "seeds": [1]}).jobs
    ]
    shared = {j.id for j in a.jobs} & {j.id for j in b.jobs}
    assert shared == {j.id for j in a.jobs}  # the same work has the same id in both suites
    c = load_suite(
        "base2novel",
        {
            "datasets": ["caltech101"],
            "seeds": [1],
            "overrides": parse_overrides(["iwtd.p_max=0.4"]),
        },
    )
    assert {j.id for j in c.jobs}.isdisjoint({j.id for j in a.jobs})


def test_all15_covers_the_15_datasets_and_xd_dg_reuse_one_imagenet_job():
    s = load_suite("all15", {"seeds": [1]})
    read = {j.train.dataset for j in s.jobs} | {e.dataset for j in s.jobs for e in j.evals}
    assert read == set(DATASETS.names()) - {"synthetic"}
    assert len(read) == 15
    sources = [j for j in s.jobs if j.protocol in ("xd", "dg") and j.source is None]
    assert len(sources) == 1  # one ImageNet training job serves xd and dg
    src = sources[0]
    assert src.train.dataset == "imagenet" and src.train.subsample == "all"
    assert src.epochs == 5  # docs/dpl.md §5: ImageNet trains 5 epochs
    evals = [j for j in s.jobs if j.source == src.id]
    assert sorted(e.evals[0].dataset for e in evals) == sorted(
        [
            "caltech101",
            "oxford_pets",
            "stanford_cars",
            "oxford_flowers",
            "food101",
            "fgvc_aircraft",
            "sun397",
            "dtd",
            "eurosat",
            "ucf101",
            "imagenetv2",
            "imagenet_sketch",
            "imagenet_a",
            "imagenet_r",
        ]
    )
    assert all(not e.trains for e in evals)
    b2n = [j for j in s.jobs if j.protocol == "base2novel"]
    assert len(b2n) == 11
    assert all(j.train.subsample == "base" and j.train.shots == 16 for j in b2n)
    assert all({e.subsample for e in j.evals} == {"base", "novel"} for j in b2n)


def test_fewshot_and_longtail_expansion():
    fs = load_suite("fewshot", {"datasets": ["dtd"], "seeds": [1, 2]})
    assert sorted((j.train.shots, j.seed) for j in fs.jobs) == sorted(
        (k, s) for k in (1, 2, 4, 8, 16) for s in (1, 2)
    )
    lt = load_suite("longtail", {"datasets": ["dtd"], "seeds": [1]})
    (job,) = lt.jobs
    assert job.train.imbalance == 10 and job.train.shots is None and job.train.subsample == "base"


def test_overrides_parse_yaml_scalars_and_explicit_false_wins():
    o = parse_overrides(
        [
            "iwtd.importance=[cls,self]",
            "rer.enabled=false",
            "iwtd.p_max=0.4",
            "backbone.pretrained=null",
        ]
    )
    assert o == {
        "iwtd": {"importance": ["cls", "self"], "p_max": 0.4},
        "rer": {"enabled": False},
        "backbone": {"pretrained": None},
    }
    s = load_suite("smoke", {"methods": ["dpl"], "overrides": o})
    cfg = s.jobs[0].config
    assert cfg.rer.enabled is False and cfg.iwtd.importance == ("cls", "self")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["iwtd.p_max"])


@pytest.mark.parametrize(
    ("name", "sel", "match"),
    [
        ("nope", {}, "unknown suite 'nope'; choose one of: all15, base2novel"),
        ("smoke", {"methods": ["dpx"]}, "unknown method 'dpx'; choose one of: clip_lora, cocoop"),
        ("smoke", {"overrides": {"iwtd": {"p_mid": 1}}}, "unknown config key iwtd.p_mid"),
        ("smoke", {"overrides": {"optim": {"epochs": "many"}}}, "expected int"),
        ("smoke", {"datasets": ["caltech101"]}, "leaves no jobs"),
    ],
)
def test_bad_selections_raise_one_line(name, sel, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_suite(name, sel)
    assert "\n" not in str(e.value)
