"""One launch request: the three commands share every execution option (generated from
`LaunchRequest`), plan with `--dry-run --format json`, and a notebook gets the same checks through
`run.execute` without Typer. Job ids are the work alone: not the LLM cache's path, not harness
settings."""

import json
import shutil

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from dplbench.cli import app
from dplbench.errors import ConfigError
from dplbench.plan.suites import load_suite
from dplbench.request import LaunchRequest, Selection
from dplbench.run import execute
from dplbench.run.events import JobEnded
from dplbench.run.prepare import ensure_synthetic

# The execution options of `run` that `tune` and `ablate` must take too (issue #17's list).
RUN_OPTIONS = {
    "--address", "--compile", "--cpus", "--data", "--datasets", "--dry-run", "--format", "--gpus",
    "--jobs-per-gpu", "--llm-cache", "--loader-workers", "--no-ray", "--on-data-error",
    "--on-lease", "--results", "--resume", "--seeds", "--suite", "--track", "--track-uri",
    "--workers",
}  # fmt: skip


def _options(command: str) -> set[str]:
    cmd = get_command(app).commands[command]
    return {
        flag
        for p in cmd.params
        if p.param_type_name == "option"
        for flag in (*p.opts, *p.secondary_opts)
    }


def test_run_tune_and_ablate_take_every_execution_option():
    run, tune, ablate = (_options(c) for c in ("run", "tune", "ablate"))
    assert RUN_OPTIONS <= run and RUN_OPTIONS <= tune and RUN_OPTIONS <= ablate
    shared = run - {"--methods"}  # run's own: the methods of a suite (tune: --method)
    assert shared <= tune and shared <= ablate


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--suite", "smoke"],
        ["tune", "--param", "lr", "--values", "0.1,0.2", "--suite", "smoke"],
        ["ablate", "mag", "--suite", "smoke"],
    ],
)
def test_every_command_plans_as_json(args, tmp_path):
    out = CliRunner().invoke(
        app, [*args, "--seeds", "1", "--dry-run", "--format", "json", "--results", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    jobs = [json.loads(line) for line in out.stdout.splitlines()]
    assert jobs and all({"job_id", "method", "config", "params"} <= set(j) for j in jobs)
    if args[0] == "tune":
        assert sorted(j["config"]["optim"]["lr"] for j in jobs) == [0.1, 0.2]
    if args[0] == "ablate":
        assert {j["params"]["variant"] for j in jobs} == {"on", "off"}
    assert not (tmp_path / "rows").exists()  # a plan writes nothing


def test_bad_request_values_are_one_line_errors():
    with pytest.raises(ConfigError, match="--jobs-per-gpu '0': a positive integer or auto"):
        LaunchRequest.of(jobs_per_gpu="0")
    with pytest.raises(ConfigError, match="--on-lease 'later': choose skip or wait"):
        LaunchRequest.of(on_lease="later")
    with pytest.raises(ConfigError, match="unknown request field 'gpu'"):
        LaunchRequest.of(gpu=1)
    out = CliRunner().invoke(app, ["tune", "--param", "lr", "--format", "yaml", "--dry-run"])
    assert out.exit_code == 2 and "--format 'yaml': choose table or json" in out.stderr


def test_the_library_runs_a_suite_without_typer(tmp_path):
    """The README's three lines: load a suite, build a request, execute."""
    shards = tmp_path / "shards"
    ensure_synthetic(str(shards))
    plan = load_suite(
        "smoke", {"methods": ["coop", "zsclip"], "overrides": {"optim": {"epochs": 1}}}
    )
    request = LaunchRequest.of(
        data=str(shards), results=str(tmp_path / "r"), use_ray=False, loader_workers=0
    )
    events = []
    result = execute(plan, request, events.append)
    assert not result.failed and len(result.summary.outcomes) == 2
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "PlanChecked" and {"JobStarted", "EpochDone", "JobEnded"} <= set(kinds)
    assert {e.status for e in events if isinstance(e, JobEnded)} == {"done"}
    (coop,) = [r for r in result.summary_rows() if r["method"] == "coop"]
    assert set(coop) == {"method", "dataset", "seeds", "base", "novel", "HM", "HM 95% CI"}
    # the pre-run checks are the library's: a missing LLM cache fails before anything runs
    llm = load_suite("smoke", {"methods": ["llamp"]}, llm_cache=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="no LLM cache for synthetic .* dplbench llm cache"):
        execute(llm, request.replace(llm_cache=(str(tmp_path / "none"),)))


def test_job_ids_do_not_change_with_the_llm_cache_path_or_harness_settings(tmp_path):
    from tests.conftest import tiny_llm, tiny_llm_cache

    caches = (tiny_llm_cache("drople"), tiny_llm_cache("llamp"))
    moved = (tmp_path / "elsewhere" / "a", tmp_path / "elsewhere" / "b")
    for src, dst in zip(caches, moved):
        shutil.copytree(src, dst)
    over = {"llm": {"model": tiny_llm()}}
    sel = Selection(methods=("llamp", "dpl-release", "coop"), seeds=(1,), overrides=over)
    here = {j.id for j in load_suite("smoke", sel, llm_cache=caches).jobs}
    there = {j.id for j in load_suite("smoke", sel, llm_cache=[str(m) for m in moved]).jobs}
    assert here == there and len(here) == 3
    jobs = load_suite("smoke", sel, llm_cache=[str(m) for m in moved[::-1]]).jobs
    llamp = next(j for j in jobs if j.method == "llamp")  # each reads its own recipe's cache
    # the tiny caches generate 6 tokens (LLaMP: 64): the label says so
    assert llamp.llm["recipe"] == "llamp+max_new_tokens=6" and {j.id for j in jobs} == here
    assert str(moved[1]) not in json.dumps(llamp.describe()) and llamp.config.llm.cache is None
    assert llamp.llm["datasets"]["synthetic"]["classes_sha"]  # what it reads, not where
    # no cache (nothing read yet) is other work
    other = {j.id for j in load_suite("smoke", sel, llm_cache=str(tmp_path / "none")).jobs}
    assert other != here and len(other & here) == 1  # coop's id only
    with pytest.raises(ConfigError, match="pass it as --llm-cache"):
        load_suite("smoke", {"methods": ["llamp"], "overrides": {"llm": {"cache": "x"}}})
