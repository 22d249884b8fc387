"""Planning at scale: recipes are parsed once and configs resolved once per distinct (method,
layers), and none of it changes a job's id or hides a changed file."""

import os
import time

from dpl.config import MethodConfig, PromptConfig
from dpl.methods import METHODS, register
from dplbench.plan import config as plan_config
from dplbench.plan import jobs as plan_jobs
from dplbench.plan import methods as plan_methods
from dplbench.plan.methods import resolve_method
from dplbench.plan.suites import load_suite
from dplbench.plan.sweeps import sweep_plan
from dplbench.request import Selection, SweepSelection

# A job id names its results on disk (R/rows/.../<job_id>-<run>.parquet) and is what --resume
# matches: these three were computed before the planning caches existed (issue #28), and a
# change here orphans every user's results.
SMOKE_IDS = {"zsclip": "4b90795b809e2f49", "coop": "2d4bb9dd2942574f", "dpl": "efd57be35f385d82"}


def _cold() -> None:
    for cache in (plan_config._PARSED, plan_methods._RESOLVED, plan_methods._LAYERS,
                  plan_jobs._WORK, plan_jobs._PLAIN):  # fmt: skip
        cache.clear()


def test_job_ids_are_those_of_before_the_caches_warm_or_cold():
    _cold()
    cold = {j.method: j.id for j in load_suite("smoke").jobs}
    warm = {j.method: j.id for j in load_suite("smoke").jobs}
    assert cold == warm == SMOKE_IDS
    _cold()
    b2n = {
        j.id for j in load_suite("base2novel", {"methods": ["coop", "dpl"], "seeds": [1, 2]}).jobs
    }
    assert b2n == {j.id for j in load_suite("base2novel", {"methods": ["coop", "dpl"],
                                                           "seeds": [1, 2]}).jobs}  # fmt: skip
    assert len(b2n) == 2 * 2 * 11


def test_jobs_that_differ_in_seed_share_one_resolved_config_and_each_recipe_is_parsed_once():
    _cold()
    parsed = []
    real = plan_config.yaml.safe_load
    plan_config.yaml.safe_load = lambda text: parsed.append(1) or real(text)
    try:
        jobs = load_suite("base2novel", {"methods": ["coop"], "seeds": [1, 2, 3]}).jobs
    finally:
        plan_config.yaml.safe_load = real
    by_dataset = {}
    for j in jobs:
        by_dataset.setdefault(j.train.dataset, set()).add(id(j.config))
    assert len(jobs) == 33 and all(len(ids) == 1 for ids in by_dataset.values())
    assert len(parsed) <= 3  # the suite, coop's recipe, the datasets' table: not one per job


def test_a_recipe_changed_on_disk_is_read_again(tmp_path):
    recipe = tmp_path / "coop_planning.yaml"
    recipe.write_text("optim: {epochs: 3}\n")
    register(
        "coop_planning",
        MethodConfig(method="coop_planning", prompts=PromptConfig(n_ctx_text=2, depth_text=1)),
        plugins=False,
        recipe=recipe,
    )
    try:
        assert resolve_method("coop_planning").optim.epochs == 3
        recipe.write_text("optim: {epochs: 70}\n")  # another size, and a later mtime
        later = time.time() + 5
        os.utime(recipe, (later, later))
        assert resolve_method("coop_planning").optim.epochs == 70
        assert resolve_method("coop_planning", {"optim": {"epochs": 4}}).optim.epochs == 4
    finally:
        METHODS._items.pop("coop_planning")  # other tests list the registry's names


def test_a_sweep_of_many_values_plans_each_value_once():
    _cold()
    values = [round(0.2 + 0.01 * i, 2) for i in range(20)]
    words = SweepSelection(param=(f"p_max={','.join(map(str, values))}",), scheduler="fifo")
    plan = sweep_plan(Selection(suite="base2novel", seeds=(1,)), words)
    assert len(plan.sweep.trials) == 20 and len(plan.jobs) == 20 * 11
    assert len({j.id for j in plan.jobs}) == len(plan.jobs)
    p_max = {j.config.iwtd.p_max for j in plan.jobs}
    assert p_max == set(values)
