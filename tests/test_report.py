"""Aggregation (docs/protocols.md §2) and report rendering, on hand-computed synthetic tables and on the
published reference numbers."""

import json
import statistics
from pathlib import Path

import pyarrow as pa
import pytest

from dplbench.plan.suites import protocol_spec
from dplbench.results import aggregate as agg
from dplbench.results.ablations import pivot
from dplbench.results.render import RenderedReport, render_report
from dplbench.results.report import report_markdown
from dplbench.results.root import ReportFiles
from dplbench.results.store import ROW_SCHEMA

# The protocols' datasets, as their canonical suite files declare them.
XD_TARGETS = protocol_spec("xd").targets
DG_TARGETS = protocol_spec("dg").targets
BASE2NOVEL_DATASETS = protocol_spec("base2novel").datasets
SHOTS = protocol_spec("fewshot").shots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(method, dataset, accuracy, seed=1, protocol="base2novel", subsample="all", **extra):
    """One results row with every ROW_SCHEMA column (the rest null)."""
    out = dict.fromkeys(ROW_SCHEMA.names)
    out.update(
        job_id=f"{method}-{dataset}-{seed}", run_id="r0", suite="main", protocol=protocol,
        method=method, dataset=dataset, subsample=subsample, split="test", shots=16,
        seed=seed, accuracy=accuracy, params="{}",
    )  # fmt: skip
    out.update(extra)
    return out


# caltech101: base 90/92/94 (mean 92, std 2), novel 60/62/64 (mean 62, std 2)
# dtd:        base 80/80/80 (mean 80, std 0), novel 40/44/48 (mean 44, std 4)
B2N = {"caltech101": ([90, 92, 94], [60, 62, 64]), "dtd": ([80, 80, 80], [40, 44, 48])}


def b2n_rows(method="coop", data=B2N):
    rows = []
    for ds, (base, novel) in data.items():
        for seed, (b, n) in enumerate(zip(base, novel), start=1):
            rows.append(row(method, ds, b, seed, subsample="base"))
            rows.append(row(method, ds, n, seed, subsample="novel"))
    return rows


def hm(b, n):
    return 2 * b * n / (b + n)


@pytest.fixture(scope="module")
def refs():
    return agg.reference_tables()


# ---------------------------------------------------------------- published numbers


def test_reference_copy_matches_loader(refs):
    assert set(refs) == {
        "base2novel", "cross_dataset", "domain_generalization", "fewshot_average",
        "longtail_imb10_hm",
    }  # fmt: skip
    assert all("source" in r for t in refs.values() for r in t)


def test_promptsrc_published_average_reproduced(refs):
    avg = agg.reference_average(refs["base2novel"], "promptsrc")
    assert avg["datasets"] == 11
    assert (round(avg["base"], 2), round(avg["novel"], 2), round(avg["hm"], 2)) == (
        84.26, 76.10, 79.97,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["clip", "coop", "cocoop", "kgcoop", "maple", "promptsrc"])
def test_published_averages_are_hm_of_averages(refs, method):
    published = next(
        r for r in refs["base2novel"] if r["method"] == method and r["dataset"] == "average"
    )
    avg = agg.reference_average(refs["base2novel"], method)
    for key in ("base", "novel", "hm"):
        assert avg[key] == pytest.approx(published[key], abs=0.01), key
    # ... and not the mean of the per-dataset HMs, which differs by more than rounding.
    hms = [
        r["hm"] for r in refs["base2novel"] if r["method"] == method and r["dataset"] != "average"
    ]
    assert abs(statistics.fmean(hms) - published["hm"]) > 0.05


@pytest.mark.parametrize("method", ["ivlp", "dpl"])
def test_averages_without_per_dataset_rows_are_not_reproducible(refs, method):
    # The published file holds only these methods' Average rows (PromptSRC README, DPL abstract).
    assert agg.reference_average(refs["base2novel"], method) == {
        "base": None, "novel": None, "hm": None, "datasets": 0,
    }  # fmt: skip


def test_published_target_averages_consistent(refs):
    for name, targets in (
        ("cross_dataset", XD_TARGETS),
        ("domain_generalization", DG_TARGETS),
    ):
        for r in refs[name]:
            mean = statistics.fmean(r[t] for t in targets)
            assert mean == pytest.approx(r["target_average"], abs=0.01), (name, r["method"])


# ---------------------------------------------------------------- aggregation


def test_base2novel_hand_computed():
    table = agg.base2novel(pa.Table.from_pylist(b2n_rows(), schema=ROW_SCHEMA))
    cal, dtd, avg = table
    assert (cal["dataset"], dtd["dataset"], avg["dataset"]) == ("caltech101", "dtd", "average")
    assert (cal["base"], cal["base_std"], cal["novel"], cal["novel_std"]) == (92, 2, 62, 2)
    assert (dtd["base"], dtd["base_std"], dtd["novel"], dtd["novel_std"]) == (80, 0, 44, 4)
    assert (cal["n_base"], cal["n_novel"]) == (3, 3)
    assert cal["hm"] == pytest.approx(hm(92, 62))  # HM of the seed means
    assert dtd["hm"] == pytest.approx(hm(80, 44))
    assert (avg["base"], avg["novel"]) == (86, 53)
    hm_of_averages = hm(86, 53)  # 65.58
    mean_of_hms = (hm(92, 62) + hm(80, 44)) / 2  # 65.43
    assert abs(hm_of_averages - mean_of_hms) > 0.1
    assert avg["hm"] == pytest.approx(hm_of_averages)
    assert avg["datasets"] == 2 and avg["complete"] is False  # 2 of the 11 datasets


def test_base2novel_single_seed_missing_novel_and_compare(refs):
    rows = [row("zsclip", "eurosat", 50.0, subsample="base"), *b2n_rows("zsclip")]
    table = agg.base2novel(rows, compare=True, refs=refs)
    eurosat = next(r for r in table if r["dataset"] == "eurosat")
    assert eurosat["base"] == 50 and eurosat["base_std"] is None  # one seed: no std
    assert eurosat["novel"] is None and eurosat["hm"] is None
    avg = table[-1]
    assert avg["datasets"] == 2 and avg["base"] == 86  # eurosat (no novel) is left out
    assert eurosat["pub_hm"] == 60.03  # zsclip is "clip" in the published tables
    # Incomplete: compared with the published rows of the same 2 datasets, by the same rule.
    assert avg["pub_datasets"] == 2
    assert avg["pub_hm"] == pytest.approx(hm((96.84 + 53.24) / 2, (94.00 + 59.90) / 2))


def test_base2novel_complete_average_compared_with_published_average(refs):
    rows = [
        row("zsclip", ds, 70.0, subsample=s)
        for ds in BASE2NOVEL_DATASETS
        for s in ("base", "novel")
    ]
    avg = agg.base2novel(rows, compare=True, refs=refs)[-1]
    assert avg["complete"] and avg["datasets"] == 11 and avg["hm"] == 70
    assert (avg["pub_base"], avg["pub_novel"], avg["pub_hm"]) == (69.34, 74.22, 71.70)


def test_sweep_and_val_rows_stay_out_of_protocol_tables():
    rows = b2n_rows()
    rows += [row("coop", "caltech101", 0.0, subsample="base", params='{"lr": 1}')]
    rows += [row("coop", "caltech101", 0.0, subsample="base", split="val")]
    assert agg.base2novel(rows)[0]["base"] == 92


def test_longtail_per_ratio_with_published_hm(refs):
    rows = [
        {**r, "protocol": "longtail", "imbalance": 10.0}
        for r in b2n_rows("dpl", {"dtd": B2N["dtd"]})
    ]
    table = agg.longtail(rows, compare=True, refs=refs)
    assert [r["dataset"] for r in table] == ["dtd", "average"]
    assert table[0]["hm"] == pytest.approx(hm(80, 44)) and table[0]["imbalance"] == 10
    assert table[0]["pub_hm"] == 67.39


def target_rows(method, protocol, targets, seeds=(1, 2)):
    """Target i: seed s gives 50 + i + (s - 1.5) * 2, so the mean over seeds is 50 + i."""
    return [
        row(method, t, 50 + i + (s - 1.5) * 2, s, protocol=protocol, train_dataset="imagenet")
        for i, t in enumerate(targets)
        for s in seeds
    ]


def test_cross_dataset_target_average(refs):
    rows = target_rows("coop", "xd", ["imagenet", *XD_TARGETS])
    (out,) = agg.cross_dataset(rows, compare=True, refs=refs)
    assert out["imagenet"] == 50
    assert [out[t] for t in XD_TARGETS] == list(range(51, 61))
    assert out["caltech101_std"] == pytest.approx(2**0.5)
    assert out["average"] == pytest.approx(55.5) and out["complete"]
    assert out["pub_average"] == 63.88 and out["pub_imagenet"] == 71.51
    # A missing target: averaged over those present and marked incomplete.
    (part,) = agg.cross_dataset([r for r in rows if r["dataset"] != "ucf101"])
    assert part["average"] == pytest.approx(55.0) and part["targets"] == 9
    assert part["complete"] is False and part["ucf101"] is None


def test_domain_generalization_source_from_xd(refs):
    rows = target_rows("zsclip", "dg", DG_TARGETS)
    rows += [row("zsclip", "imagenet", 66.0, s, protocol="xd") for s in (1, 2)]
    (out,) = agg.domain_generalization(rows, compare=True, refs=refs)
    assert out["imagenet"] == 66  # the ImageNet-trained prompts' source accuracy, from xd rows
    assert out["average"] == pytest.approx(51.5)  # mean of 50, 51, 52, 53
    assert out["pub_average"] == 57.18 and out["pub_imagenet_a"] == 47.77


def test_fewshot_average_over_datasets(refs):
    rows = [
        row("coop", "caltech101", a, s, protocol="fewshot", shots=k)
        for k, accs in ((1, (80, 82)), (16, (90, 94)))
        for s, a in enumerate(accs, start=1)
    ]
    rows += [row("coop", "dtd", 50.0 + k, 1, protocol="fewshot", shots=k) for k in (1, 16)]
    table = agg.fewshot(rows, compare=True, refs=refs)
    assert [(r["method"], r["shots"]) for r in table] == [("coop", 1), ("coop", 16)]
    k1, k16 = table
    assert k1["caltech101"] == 81 and k1["dtd"] == 51 and k1["average"] == 66
    assert k16["average"] == pytest.approx((92 + 66) / 2)
    assert k1["pub_average"] == 67.56 and k16["pub_average"] == 79.89
    assert k1["complete"] is False and k1["datasets"] == 2


def test_pivot_by_param_and_variant():
    rows = []
    for p, shift in ((0.1, 0), (0.5, 2)):
        for r in b2n_rows("dpl"):
            rows.append({**r, "accuracy": r["accuracy"] + shift, "params": json.dumps({"p": p})})
    table = pivot(rows, by=["p"])
    assert [r["p"] for r in table] == [0.1, 0.5]
    assert (table[0]["base"], table[0]["novel"]) == (86, 53)
    assert table[0]["hm"] == pytest.approx(hm(86, 53))
    assert table[1]["hm"] == pytest.approx(hm(88, 55))
    per_ds = pivot(rows, by=["params.p", "dataset"])
    assert per_ds[0]["dataset"] == "caltech101" and per_ds[0]["base_std"] == 2
    plain = pivot([{**r, "variant": "v"} for r in target_rows("dpl", "xd", ["dtd"])], ["variant"])
    assert plain == [
        {"variant": "v", "datasets": 1, "accuracy": 50, "accuracy_std": 2**0.5, "seeds": 2}
    ]


# ---------------------------------------------------------------- rendering


def all_protocol_rows():
    rows = b2n_rows("coop") + b2n_rows("promptsrc", {"dtd": B2N["dtd"]})
    rows += target_rows("coop", "xd", ["imagenet", *XD_TARGETS])
    rows += target_rows("coop", "dg", DG_TARGETS)
    rows += [row("coop", "dtd", 60.0, 1, protocol="fewshot", shots=k) for k in SHOTS]
    rows += [
        {**r, "protocol": "longtail", "imbalance": 10.0}
        for r in b2n_rows("dpl", {"dtd": B2N["dtd"]})
    ]
    rows += [{**r, "suite": "ablate", "variant": "no-iwtd"} for r in b2n_rows("dpl")]
    rows += [
        {**r, "suite": "main", "params": json.dumps({"lr": lr, "sweep": "lr-1"}), "accuracy": a}
        for lr, a in ((0.1, 70.0), (0.2, 72.0))
        for r in target_rows("coop", "xd", ["dtd"], seeds=(1,))
    ]
    return rows


def test_render_report_writes_markdown_and_pngs(tmp_path):
    files = render_report(all_protocol_rows(), ReportFiles(str(tmp_path / "out")))
    assert isinstance(files, RenderedReport)
    md = Path(files.markdown).read_text()
    assert md == files.text and files.markdown == str(tmp_path / "out" / "report.md")
    assert {Path(p).name for p in files.plots} == {
        "base2novel.png", "xd.png", "dg.png", "fewshot.png", "longtail.png",
        "base2novel-heatmap.png", "xd-heatmap.png", "dg-heatmap.png",
    }  # fmt: skip
    for png in map(Path, files.plots):
        assert png.read_bytes().startswith(PNG_SIGNATURE)
        assert f"]({png.name})" in md
    assert not list((tmp_path / "out").glob(".*tmp"))  # temporaries renamed away
    for text in (
        "## Base-to-novel generalisation", "## Cross-dataset transfer", "## Domain generalisation",
        "## Few-shot classification", "## Long-tail base-to-novel", "## Ablations", "## Sweeps",
        "### lr-1 (xd)", "| lr | Accuracy | Datasets |", "| 0.1 | 70.00 | 1 |",
        "92.00 ± 2.00",  # coop caltech101 base
        "44.00 ± 4.00",  # dtd novel
        f"{hm(86, 53):.2f}",  # coop Average HM
        "54.24",  # coop published dtd HM
        "† Published per-dataset numbers over the same datasets",
        "71.75 †",  # promptsrc: published dtd alone, as our Average covers dtd only
        "55.50", "63.88",  # xd target average, ours and published
        "2 (incomplete)",
        "no-iwtd",
    ):  # fmt: skip
        assert text in md, text
    assert "None" not in md  # missing values are –
    sweeps = md.split("## Sweeps", 1)[1]
    assert "no-iwtd" not in sweeps and "### ablate" not in sweeps  # its own section


def test_markdown_suite_filter_compare_off_and_missing_novel():
    rows = all_protocol_rows() + [row("coop", "eurosat", 70.0, subsample="base")]
    md = report_markdown(rows, suite="main", compare=False)
    assert "Ablations" not in md and "published" not in md
    eurosat = next(line for line in md.splitlines() if line.startswith("| EuroSAT"))
    assert eurosat.split(" | ")[2:5] == ["70.00", "–", "–"]  # one seed: no ± std


@pytest.mark.parametrize("empty", [[], pa.Table.from_pylist([], schema=ROW_SCHEMA)])
def test_empty_input_gives_one_line(tmp_path, empty):
    assert report_markdown(empty) == "No results to report.\n"
    assert report_markdown(all_protocol_rows(), suite="nope") == (
        "No results to report for suite `nope`.\n"
    )
    files = render_report(empty, ReportFiles(str(tmp_path)))
    assert files.plots == () and Path(files.markdown).read_text() == "No results to report.\n"


def test_clip_lora_few_shot_shows_its_published_average(refs):
    """CLIP-LoRA's published 11-dataset averages (configs/reference/fewshot_average.csv, its
    source column says where they come from) sit beside ours in the few-shot section."""
    (pub,) = [r for r in refs["fewshot_average"] if r["method"] == "clip_lora"]
    assert "2405.18541" in pub["source"] and "Table 2" in pub["source"]
    rows = [row("clip_lora", "dtd", 60.0, 1, protocol="fewshot", shots=k) for k in (1, 16)]
    k1, k16 = agg.fewshot(rows, compare=True, refs=refs)
    assert (k1["pub_average"], k16["pub_average"]) == (72.5, 83.0)
    text = report_markdown(rows, refs=refs)
    assert "72.50" in text and "83.00" in text
