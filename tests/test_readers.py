"""Readers never answer an empty success: `report`, `results ls / query / show` on a root that
does not exist or holds no results, and `report --suite S` for a suite without results, are one
line naming the root (and the suites that have results), exit 2, and write nothing."""

from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.results import store
from dplbench.results.root import ResultsRoot

READERS = [
    ["report"],
    ["report", "--suite", "smoke"],
    ["results", "ls"],
    ["results", "query", "SELECT 1"],
    ["results", "show", "abc"],
]


def one_line(args: list[str]) -> str:
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    (line,) = [x for x in out.output.splitlines() if x.strip()]
    return line


@pytest.mark.parametrize("args", READERS)
def test_a_root_that_does_not_exist_is_one_line(tmp_path, args):
    root = tmp_path / "nowhere"
    line = one_line([*args, "--results", str(root)])
    assert line == f"error: no results under {root} (it does not exist); give the --results " \
        "root a run wrote to"  # fmt: skip
    assert not root.exists()


@pytest.mark.parametrize("args", READERS)
def test_an_empty_root_is_one_line(tmp_path, args):
    (tmp_path / "rows").mkdir()
    line = one_line([*args, "--results", str(tmp_path)])
    assert line == f"error: no results under {tmp_path}; give the --results root a run wrote to"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows"]  # no report written


def test_report_of_a_suite_without_results_lists_the_suites_that_have_them(tmp_path):
    root = ResultsRoot(tmp_path)
    for suite in ("smoke", "base2novel"):
        row = dict.fromkeys(store.ROW_SCHEMA.names)
        row.update(job_id="j", run_id="r", suite=suite, method="coop", protocol="base2novel",
                   dataset="synthetic", subsample="base", split="test", accuracy=50.0,
                   params="{}", created_at=datetime.now(timezone.utc))  # fmt: skip
        store.write_rows(root, [row])
    line = one_line(["report", "--suite", "smok", "--results", str(tmp_path)])
    assert line == (
        f"error: no results for suite 'smok' under {tmp_path}; suites with results: "
        "base2novel, smoke"
    )
    assert not (tmp_path / "reports").exists()
    ok = CliRunner().invoke(app, ["report", "--suite", "smoke", "--results", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
