"""Intervals and paired tests (#29, docs/results.md §4) against hand computations: the exact
bootstrap distribution of a mean of 0/1 outcomes is binomial, of a paired difference a
trinomial one; McNemar's exact p is a binomial tail; and a report over a small root."""

import math

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.results import store
from dplbench.results.intervals import (
    Part,
    accuracy_combine,
    b2n_combine,
    interval,
    mcnemar,
    paired_interval,
)
from dplbench.results.root import ResultsRoot
from tests.test_report import row


def _part(*correct: np.ndarray, sub: str = "all") -> Part:
    """One dataset's part from each seed's outcomes (0/1 arrays of equal length)."""
    m = np.stack(correct).astype(float)
    return Part({sub: 100 * m.mean(axis=1)}, {sub: m}, tuple(range(1, len(correct) + 1)))


def _outcomes(n: int, right: int) -> np.ndarray:
    return (np.arange(n) < right).astype(float)


def test_one_seed_interval_is_the_binomial_bootstrap_distribution():
    """300 of 400 right: resampling the samples draws Binomial(400, 0.75) right answers."""
    iv = interval({"d": _part(_outcomes(400, 300))}, accuracy_combine(["d"]))
    lo, hi = stats.binom.ppf([0.025, 0.975], 400, 0.75) / 4  # in percent
    assert iv.value[0] == 75.0 and iv.seeds_only == ()
    assert iv.low[0] == pytest.approx(lo, abs=0.5) and iv.high[0] == pytest.approx(hi, abs=0.5)


# 200 samples: only A right on 30, only B right on 10, both right on 100, both wrong on 60.
A = np.r_[np.ones(30), np.zeros(10), np.ones(100), np.zeros(60)]
B = np.r_[np.zeros(30), np.ones(10), np.ones(100), np.zeros(60)]


def test_paired_difference_resamples_the_same_samples_for_both_methods():
    """A − B = (30 − 10)/200 = 10 points. Resampling samples jointly, the difference is
    (X − Y)/200 with (X, Y, rest) ~ Multinomial(200; .15, .05, .80): sd = sqrt((.2 − .1²)/200).
    Resampling each method's samples independently would give sd = sqrt((.65·.35 + .55·.45)/200),
    an interval 1.6 times as wide."""
    iv = paired_interval({"d": _part(A)}, {"d": _part(B)}, accuracy_combine(["d"]))
    sd = 100 * math.sqrt((0.2 - 0.1**2) / 200)
    assert iv.value[0] == pytest.approx(10.0)
    assert iv.low[0] == pytest.approx(10 - 1.96 * sd, abs=0.6)
    assert iv.high[0] == pytest.approx(10 + 1.96 * sd, abs=0.6)
    # P(X <= Y) under the trinomial: the bootstrap p is twice it (well below 0.01).
    assert iv.p[0] < 0.01


def test_mcnemar_is_the_exact_binomial_tail_of_the_discordant_samples():
    hand = 2 * sum(math.comb(40, k) for k in range(11)) / 2**40  # 10 of 40 discordant for B
    assert mcnemar(A > 0, B > 0) == pytest.approx(hand, rel=1e-9)
    assert mcnemar(A > 0, A > 0) == 1.0


def test_seeds_only_interval_spans_the_seed_means_a_bootstrap_can_draw():
    """Seeds 10, 20, 60 without outcomes: the mean of 3 draws is 10 or 60 with probability
    1/27 each (> 2.5%), so the 95% percentile interval is [10, 60]."""
    iv = interval({"d": Part({"all": np.array([10.0, 20.0, 60.0])})}, accuracy_combine(["d"]))
    assert iv.value[0] == pytest.approx(30.0) and iv.seeds_only == ("d",)
    assert (iv.low[0], iv.high[0]) == (10.0, 60.0)
    one = interval({"d": Part({"all": np.array([10.0])})}, accuracy_combine(["d"]))
    assert one.low is None  # one seed, no outcomes: nothing to resample


def test_an_average_resamples_each_dataset_separately():
    """Two datasets of the same outcomes, resampled independently: the Average's interval is
    1/sqrt(2) as wide as one dataset's (one shared draw would keep it as wide)."""
    one = interval({"d": _part(_outcomes(400, 300))}, accuracy_combine(["d"]))
    two = interval(
        {"d": _part(_outcomes(400, 300)), "e": _part(_outcomes(400, 300))},
        accuracy_combine(["d", "e"]),
    )
    ratio = (two.high[0] - two.low[0]) / (one.high[0] - one.low[0])
    assert ratio == pytest.approx(1 / math.sqrt(2), abs=0.08)


def test_seeds_and_samples_are_resampled_crossed_and_reproducibly():
    """Three seeds with the same outcomes: seed resampling adds nothing, so the interval is the
    one-seed interval (the samples drawn once for all seeds, not per seed); and twice the same."""
    o = _outcomes(400, 300)
    one = interval({"d": _part(o)}, accuracy_combine(["d"]))
    three = interval({"d": _part(o, o, o)}, accuracy_combine(["d"]))
    assert (three.low[0], three.high[0]) == pytest.approx((one.low[0], one.high[0]), abs=0.3)
    again = interval({"d": _part(o, o, o)}, accuracy_combine(["d"]))
    assert (again.low[0], again.high[0]) == (three.low[0], three.high[0])


def test_b2n_hm_of_the_averages():
    base = {"d": _part(_outcomes(100, 80), sub="base")}
    part = Part(
        {"base": np.array([80.0]), "novel": np.array([60.0])},
        {"base": base["d"].outcomes["base"], "novel": _outcomes(100, 60)[None]},
        (1,),
    )
    iv = interval({"d": part}, b2n_combine(["d"]))
    assert iv.value == pytest.approx([80.0, 60.0, 2 * 80 * 60 / 140])
    assert iv.low[2] < iv.value[2] < iv.high[2]


# ---------------------------------------------------------------- the report


def _write(root: ResultsRoot, method: str, seed: int, base: np.ndarray, novel: np.ndarray):
    rows, splits = [], []
    for sub, o in (("base", base), ("novel", novel)):
        acc = 100 * o.mean()
        rows.append(row(method, "dtd", acc, seed, subsample=sub, job_id=f"{method}-{seed}",
                        correct=int(o.sum()), total=len(o), suite="s"))  # fmt: skip
        keys = [f"{sub}{i:04d}" for i in range(len(o))]
        splits.append({"dataset": "dtd", "subsample": sub, "split": "test", "seed": seed,
                       "key": keys, "label": np.zeros(len(o)), "pred": 1 - o})  # fmt: skip
    store.write_rows(root, rows)
    return splits


def test_report_with_a_baseline_prints_the_paired_difference_and_mcnemar(tmp_path):
    """One seed each on dtd: base A vs B as above, novel the same for both (Δ novel 0)."""
    root = ResultsRoot(tmp_path)
    novel = _outcomes(50, 25)
    for method, base in (("dpl", A), ("coop", B)):
        splits = _write(root, method, 1, base, novel)
        store.write_outcomes(root, "s", method, f"{method}-1", "r0", splits)
    res = CliRunner().invoke(
        app, ["report", "--results", str(tmp_path), "--baseline", "coop", "--no-compare"]
    )
    assert res.exit_code == 0, res.output
    text = (tmp_path / "reports" / "all" / "report.md").read_text()
    hm_a, hm_b = 2 * 65 * 50 / 115, 2 * 55 * 50 / 105  # base 130/200 and 110/200 right
    section = text.split("### dpl − coop")[1]
    line = next(x for x in section.splitlines() if x.startswith("| DTD"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:3] == [f"{hm_a:.2f}", f"{hm_b:.2f}"]
    assert cells[3].startswith("+10.00 [") and cells[4].startswith("+0.00 [0.00, 0.00]")
    assert cells[5].startswith(f"{hm_a - hm_b:+.2f} [")
    # McNemar over base and novel together: the novel samples agree, so only base's 30 vs 10.
    hand = 2 * sum(math.comb(40, k) for k in range(11)) / 2**40
    assert cells[7] == f"{hand:.4f}"
    assert "dpl − coop: the HM difference holds (95% interval excludes 0) on" in text


def test_a_root_without_outcomes_says_so_and_falls_back_to_seeds(tmp_path):
    root = ResultsRoot(tmp_path)
    for seed, (b, n) in enumerate([(70, 40), (80, 50), (90, 45)], start=1):
        store.write_rows(root, [
            row("coop", "dtd", b, seed, subsample="base", job_id=f"c{seed}", suite="s"),
            row("coop", "dtd", n, seed, subsample="novel", job_id=f"c{seed}", suite="s"),
        ])  # fmt: skip
    store.write_rows(root, [
        row("dpl", "dtd", 85, 1, subsample="base", job_id="d1", suite="s"),
        row("dpl", "dtd", 55, 1, subsample="novel", job_id="d1", suite="s"),
    ])  # fmt: skip
    res = CliRunner().invoke(
        app, ["report", "--results", str(tmp_path), "--baseline", "coop", "--no-compare"]
    )
    assert res.exit_code == 0, res.output
    text = (tmp_path / "reports" / "all" / "report.md").read_text()
    assert "Seeds only (no per-sample outcomes): coop on DTD" in text
    assert "No interval (one seed, no outcomes): dpl" in text
    # dpl's one seed without outcomes: no interval for it, nor for the difference.
    assert "| DTD § | 66.79 | 57.60 | +5.00 – | +10.00 – | +9.19 – | – | – | – |" in text
    bad = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--baseline", "kgcoop"])
    assert bad.exit_code == 2 and "baseline 'kgcoop'" in bad.output


def test_the_run_summary_shows_the_hm_interval_with_two_seeds_or_outcomes(tmp_path):
    """Base 10, 20, 60 and novel 50 over three seeds, no outcomes: the resampled mean base runs
    from 10 to 60 (each drawn with probability 1/27 > 2.5%), and HM = 2·B·50/(B + 50) grows
    with it, so the interval is [HM(10), HM(60)]; with one seed and no outcomes, no column."""
    from dplbench.results.summary import summary_rows

    root = ResultsRoot(tmp_path)
    for seed, v in enumerate((10.0, 20.0, 60.0), start=1):
        store.write_rows(root, [
            row("coop", "dtd", v, seed, subsample="base", job_id=f"c{seed}", suite="s"),
            row("coop", "dtd", 50.0, seed, subsample="novel", job_id=f"c{seed}", suite="s"),
        ])  # fmt: skip
    (three,) = summary_rows(root, ["c1", "c2", "c3"])
    hm = lambda b: 2 * b * 50 / (b + 50)  # noqa: E731
    assert three["HM"] == pytest.approx(hm(30.0))
    assert three["HM 95% CI"] == f"[{hm(10.0):.2f}, {hm(60.0):.2f}]"
    (one,) = summary_rows(root, ["c1"])
    assert "HM 95% CI" not in one


def test_ablation_variants_are_compared_with_the_default_variant(tmp_path):
    """rer's default is `annealed` (the variant that changes nothing); `off` scored B's base
    outcomes, `annealed` A's: off − annealed = −10 base points, McNemar as by hand."""
    root = ResultsRoot(tmp_path)
    novel = _outcomes(50, 25)
    for variant, base in (("annealed", A), ("off", B)):
        params = f'{{"ablation": "rer", "variant": "{variant}"}}'
        rows, splits = [], []
        for sub, o in (("base", base), ("novel", novel)):
            rows.append(row("dpl", "dtd", 100 * o.mean(), 1, subsample=sub, job_id=variant,
                            suite="s", params=params))  # fmt: skip
            splits.append({"dataset": "dtd", "subsample": sub, "split": "test", "seed": 1,
                           "key": [f"{sub}{i:04d}" for i in range(len(o))],
                           "label": np.zeros(len(o)), "pred": 1 - o})  # fmt: skip
        store.write_rows(root, rows)
        store.write_outcomes(root, "s", "dpl", variant, "r0", splits)
    res = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--no-compare"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "reports" / "all" / "report.md").read_text()
    section = text.split("### rer: against `annealed`")[1]
    assert "#### off − annealed" in section and "fixed" not in section  # no rows: not shown
    line = next(x for x in section.splitlines() if x.startswith("| DTD"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    hand = 2 * sum(math.comb(40, k) for k in range(11)) / 2**40
    assert cells[3].startswith("-10.00 [") and cells[7] == f"{hand:.4f}"


def test_wide_tables_carry_an_interval_row_per_method():
    """xd, seeds only: a target at 10, 20, 60 over three seeds has the interval [10, 60] (as
    above); a target at 50 in every seed has [50, 50]; the Average's is their mean's."""
    from dplbench.plan.suites import protocol_spec
    from dplbench.results.report import report_tables, sections_markdown
    from dplbench.results.samples import Outcomes

    spec = protocol_spec("xd")
    a, b = spec.targets[:2]
    rows = []
    for seed, v in enumerate((10.0, 20.0, 60.0), start=1):
        rows.append(row("coop", a, v, seed, protocol="xd", job_id=f"a{seed}"))
        rows.append(row("coop", b, 50.0, seed, protocol="xd", job_id=f"b{seed}"))
    tables = report_tables(rows, compare=False, outcomes=Outcomes({}))
    (coop,) = tables["xd"]
    assert coop[f"ci_{a}"] == pytest.approx((10.0, 60.0))
    assert coop[f"ci_{b}"] == pytest.approx((50.0, 50.0))
    assert coop["ci_average"] == pytest.approx((30.0, 55.0))  # (10 + 50) / 2, (60 + 50) / 2
    md = sections_markdown(tables, None, {})
    assert "| *95% CI* | – | [10.00, 60.00] | [50.00, 50.00] |" in md


def test_longtail_tables_get_their_ratio_own_intervals():
    """Two imbalance ratios of the same method and dataset: each ratio's HM interval comes
    from its own seeds (base 10, 20, 60 and novel 50 at ratio 10; a constant 40 at ratio 100)."""
    from dplbench.results.report import report_tables
    from dplbench.results.samples import Outcomes

    rows = []
    for seed, b in enumerate((10.0, 20.0, 60.0), start=1):
        for ratio, base, novel in ((10.0, b, 50.0), (100.0, 40.0, 40.0)):
            for sub, v in (("base", base), ("novel", novel)):
                rows.append(row("coop", "dtd", v, seed, protocol="longtail", subsample=sub,
                                imbalance=ratio, job_id=f"c{seed}-{ratio}"))  # fmt: skip
    table = report_tables(rows, compare=False, outcomes=Outcomes({}))["longtail"]
    ci = {(r["imbalance"], r["dataset"]): r["ci_hm"] for r in table}
    hm = lambda b: 2 * b * 50 / (b + 50)  # noqa: E731
    assert ci[(10.0, "dtd")] == pytest.approx((hm(10.0), hm(60.0)))
    assert ci[(100.0, "dtd")] == pytest.approx((40.0, 40.0))
    assert ci[(10.0, "average")] == ci[(10.0, "dtd")]


def test_baseline_compares_cross_dataset_results_too(tmp_path):
    """xd, seeds only: coop at 10, 20, 60 and dpl at 50 in every seed on one target. dpl − coop
    = 50 − (mean of 3 coop draws), whose 95% interval is [50 − 60, 50 − 10] (as above)."""
    from dplbench.plan.suites import protocol_spec

    target = protocol_spec("xd").targets[0]
    root = ResultsRoot(tmp_path)
    for seed, v in enumerate((10.0, 20.0, 60.0), start=1):
        store.write_rows(root, [row("coop", target, v, seed, protocol="xd", suite="s",
                                    job_id=f"c{seed}")])  # fmt: skip
        store.write_rows(root, [row("dpl", target, 50.0, seed, protocol="xd", suite="s",
                                    job_id=f"d{seed}")])  # fmt: skip
    res = CliRunner().invoke(
        app, ["report", "--results", str(tmp_path), "--baseline", "coop", "--no-compare"]
    )
    assert res.exit_code == 0, res.output
    text = (tmp_path / "reports" / "all" / "report.md").read_text()
    section = text.split("### Cross-dataset transfer\n")[1].split("#### dpl − coop")[1]
    assert "the Accuracy difference holds (95% interval excludes 0) on 0 of 1 datasets" in section
    line = next(x for x in section.splitlines() if x.startswith("| Average"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["50.00", "30.00", "+20.00 [-10.00, 40.00]"] and cells[-1] == "no"
    # One method only: nothing to compare with is one line, exit code 2.
    alone = tmp_path / "alone"
    store.write_rows(ResultsRoot(alone), [row("coop", target, 50.0, protocol="xd", suite="s")])
    res = CliRunner().invoke(app, ["report", "--results", str(alone), "--baseline", "coop"])
    assert res.exit_code == 2 and "results of it and another method" in res.output
