"""dplbench ablate: the YAMLs cover the paper's axes and expand into labelled jobs; a smoke
ablation runs through the runner and produces its table."""

import json
from dataclasses import replace

import pytest
import typer
from typer.testing import CliRunner

from dplbench.cli import ablate, tune
from dplbench.errors import ConfigError
from dplbench.plan import ablations
from dplbench.plan.config import parse_overrides
from dplbench.request import Selection
from dplbench.results import store
from dplbench.results.ablations import ablation_table
from dplbench.results.root import ResultsRoot


def _app() -> typer.Typer:
    app = typer.Typer()
    tune.register(app)
    ablate.register(app)
    return app


def test_every_axis_has_an_ablation_and_each_expands_on_smoke():
    assert set(ablations.list_ablations()) >= {"importance", "dropout", "rer", "mag", "plugin"}
    sel = Selection(seeds=(1,))
    for name in ablations.list_ablations():
        ab = ablations.load_ablation(name)
        suite = ablations.ablation_plan(ab, replace(sel, suite="smoke"))
        assert len(suite.jobs) == len(ab.variants)  # one dataset, one seed: one job per variant
        assert {j.params["variant"] for j in suite.jobs} == {v.name for v in ab.variants}
        assert all(j.params["ablation"] == name for j in suite.jobs)
    plugin = ablations.ablation_plan(ablations.load_ablation("plugin"), replace(sel, suite="smoke"))
    by_variant = {j.params["variant"]: j for j in plugin.jobs}
    assert by_variant["coop+dpl"].method == "coop" and by_variant["coop+dpl"].config.rer.enabled
    assert not by_variant["maple"].config.iwtd.enabled
    imp = ablations.ablation_plan(
        ablations.load_ablation("importance"), replace(sel, suite="smoke")
    )
    assert {tuple(j.config.iwtd.importance) for j in imp.jobs} >= {("uniform",), ("cls",)}


def test_variant_wins_over_command_line_and_unknown_names_fail():
    ab = ablations.load_ablation("rer")
    sel = Selection(
        seeds=(1,), overrides=parse_overrides(["rer.fixed_lambda=true", "optim.epochs=1"])
    )
    jobs = {
        j.params["variant"]: j
        for j in ablations.ablation_plan(ab, replace(sel, suite="smoke")).jobs
    }
    assert jobs["annealed"].config.rer.fixed_lambda is False
    assert jobs["off"].config.optim.epochs == 1
    with pytest.raises(ConfigError, match="unknown ablation"):
        ablations.load_ablation("nope")
    out = CliRunner().invoke(_app(), ["ablate", "nope"])
    assert out.exit_code == 2 and "importance" in out.output


@pytest.mark.slow
def test_smoke_ablation_produces_its_table(tmp_path):
    args = ["ablate", "rer", "--suite", "smoke", "--seeds", "1,2", "--no-ray", "--loader-workers"]
    args += ["0", "--data", str(tmp_path / "shards"), "--results", str(tmp_path / "res")]
    out = CliRunner().invoke(_app(), [*args, "optim.epochs=1"])
    assert out.exit_code == 0, out.output
    # The summary: one row per variant, each the hand average of its own two seeds' rows.
    rows = store.query(ResultsRoot(tmp_path / "res"), "SELECT * FROM results").to_pylist()
    printed = {
        cells[1]: cells
        for line in out.output.splitlines()
        if (cells := [c.strip() for c in line.strip("│ ").split("│")])[0] == "dpl"
        and len(cells) == 8
    }
    assert sorted(printed) == ["annealed", "fixed", "off"]
    for variant, (_, _, dataset, seeds, base, novel, hm, ci) in printed.items():
        low, high = map(float, ci.strip("[]").split(","))
        assert low <= float(hm) <= high  # the HM's 95% interval (two seeds and outcomes)
        mine = [r for r in rows if json.loads(r["params"])["variant"] == variant]
        assert dataset == "synthetic" and seeds == "2" and len(mine) == 4
        means = {}
        for sub, shown in (("base", base), ("novel", novel)):
            accs = [r["accuracy"] for r in mine if r["subsample"] == sub]
            means[sub] = sum(accs) / 2
            assert shown == f"{means[sub]:.2f}"
        b, n = means["base"], means["novel"]
        assert hm == f"{2 * b * n / (b + n):.2f}"  # the HM of the means
    table = ablation_table(ablations.load_ablation("rer"), ResultsRoot(tmp_path / "res"), "smoke")
    assert [r["variant"] for r in table] == ["off", "annealed", "fixed"]  # the YAML's order
    assert all(r["hm"] is not None and r["protocol"] == "base2novel" for r in table)
    md = (tmp_path / "res" / "reports" / "ablations" / "rer-smoke.md").read_text()
    assert "| variant | Base | Novel | HM | Datasets |" in md and "| fixed |" in md
    assert "Ablation `rer`" in out.output
    # --resume finds the labelled rows and runs nothing again.
    again = CliRunner().invoke(_app(), [*args, "--resume", "optim.epochs=1"])
    assert again.exit_code == 0 and "--resume: all 6 jobs already have results" in again.output
