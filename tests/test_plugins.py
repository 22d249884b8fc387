"""Methods from outside the repository: a package in a temporary folder registers a method (its
model class, its recipe YAML) and runs the smoke suite through Ray into the results and the
report, found by --plugin and by its entry point; broken or unknown plug-ins are one line, exit 2.
And the package itself: `pip install .` (not editable) outside the checkout plans and runs."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.prepare import ensure_synthetic

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info")

PLUGIN = '''
"""A researcher's method: CoOp with 2 context words and a bias on the logits, in their package."""
from pathlib import Path

from dpl.config import MethodConfig, PromptConfig
from dpl.methods import register

register(
    "coop_biased",
    MethodConfig(
        method="coop_biased",
        prompts=PromptConfig(n_ctx_text=2, depth_text=1, ctx_init="a photo"),
    ),
    module="lab_methods.model:BiasedCoOp",
    plugins=False,
    recipe=Path(__file__).parent / "coop_biased.yaml",
)
'''
MODEL = """
import torch
from torch import nn

from dpl.methods.base import PromptedCLIP


class BiasedCoOp(PromptedCLIP):
    def __init__(self, cfg, clip=None):
        super().__init__(cfg, clip)
        self.bias = nn.Parameter(torch.zeros(()))

    def logits(self, images):
        return super().logits(images) + self.bias

    forward = logits
"""
RECIPE = "optim: {epochs: 3}  # the method's own recipe: the suite's overrides win over it\n"


def _package(root: Path, entry_point: bool = False) -> Path:
    pkg = root / "lab_methods"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "model.py").write_text(textwrap.dedent(MODEL))
    (pkg / "coop_biased.yaml").write_text(RECIPE)
    if entry_point:  # what `pip install` of a package declaring the entry point leaves behind
        info = root / "lab_methods-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-methods\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[dplbench.methods]\nlab = lab_methods\n")
    return root


def _cli(*args, env=None, cwd=None, exe=None):
    cmd = [exe or sys.executable, "-m", "dplbench.cli", *args]
    full = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=cwd, timeout=600)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_method_from_outside_the_repo_runs_on_ray_into_results_and_report(tmp_path):
    path = _package(tmp_path / "site")
    shards, res = tmp_path / "shards", tmp_path / "results"
    ensure_synthetic(str(shards))
    env = {"PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    common = ["--data", str(shards), "--results", str(res), "--loader-workers", "0"]
    dry = _cli("run", "--methods", "coop_biased", "--plugin", "lab_methods", "--dry-run",
               "--format", "json", *common, "optim.epochs=2", env=env)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    (job,) = [json.loads(line) for line in dry.stdout.splitlines()]
    assert job["method"] == "coop_biased" and job["config"]["prompts"]["n_ctx_text"] == 2
    assert job["config"]["optim"]["epochs"] == 2  # recipe (3) < suite < command line (2)

    ran = _cli("run", "--methods", "coop_biased,zsclip", "--plugin", "lab_methods", *common,
               "optim.epochs=2", env=env)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rows = store.query(
        ResultsRoot(res), "SELECT method, job_id, epochs FROM results ORDER BY ALL"
    ).to_pylist()
    assert {r["method"] for r in rows} == {"coop_biased", "zsclip"}
    assert {r["job_id"] for r in rows if r["method"] == "coop_biased"} == {job["job_id"]}
    state = res / "checkpoints" / job["job_id"] / "final.pt"
    import torch

    assert "bias" in torch.load(state, weights_only=True)  # its own parameter trained

    report = _cli("report", "--suite", "smoke", "--results", str(res), env=env)
    assert report.returncode == 0, report.stderr
    assert "| synthetic | coop_biased |" in (res / "reports" / "smoke" / "report.md").read_text()


def test_an_installed_entry_point_is_found_without_flags(tmp_path):
    path = _package(tmp_path / "site", entry_point=True)
    env = {"PYTHONPATH": str(path)}
    out = _cli("run", "--methods", "coop_biased", "--dry-run", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["method"] == "coop_biased"


@pytest.mark.parametrize(
    ("args", "env", "expect"),
    [
        (["--plugin", "no_such_module"], {}, "plugin 'no_such_module': no such module in this "
         "Python (No module named 'no_such_module'); pip install -e its package, or put the "
         "folder that holds it on PYTHONPATH"),
        ([], {"DPLBENCH_PLUGINS": "no_such_module"}, "plugin 'no_such_module': no such module"),
        (["--plugin", "lab_needs"], {}, "plugin 'lab_needs' failed to load: No module named "
         "'no_such_dependency'"),
        (["--plugin", "lab_broken"], {}, "plugin 'lab_broken' failed to load: ZeroDivisionError"),
        (["--methods", "nope"], {}, "unknown method 'nope'; choose one of:"),
    ],
)  # fmt: skip
def test_broken_or_unknown_plugins_are_one_line_exit_2(tmp_path, args, env, expect):
    (tmp_path / "lab_broken.py").write_text("1 / 0\n")
    (tmp_path / "lab_needs.py").write_text("import no_such_dependency\n")
    env = {"PYTHONPATH": str(tmp_path), **env}
    out = _cli("run", "--dry-run", *args, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expect in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.cluster
def test_pip_install_outside_the_checkout_plans_and_runs_the_smoke_suite(tmp_path):
    """A wheel install, not editable, finds its suites, recipes and references in the package.
    The fresh venv borrows this environment's dependencies (a .pth line) rather than download
    them; the editable install there is not on that path (its .pth files are not read)."""
    src = tmp_path / "src"  # setuptools builds in the source tree: a copy keeps the checkout clean
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "dpl", "dplbench"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, src / part, **({"ignore": IGNORE} if copy is shutil.copytree else {}))
    venv = tmp_path / "venv"  # without pip: its own old setuptools would shadow ours
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    deps = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "_deps.pth").write_text(deps + "\n")
    pip = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, str(src)], check=True, capture_output=True, timeout=600)
    where = subprocess.run(
        [str(py), "-c", "import dplbench.plan.config as c; print(c.CONFIG_DIR)"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(Path(site)), where.stdout  # not the checkout
    common = ["--data", str(tmp_path / "shards"), "--results", str(tmp_path / "r")]
    plan = _cli("run", "--suite", "smoke", "--dry-run", *common, exe=str(py), cwd=tmp_path)
    assert plan.returncode == 0 and "3 jobs; nothing was run" in plan.stdout, plan.stderr
    ran = _cli("run", "--suite", "smoke", "--loader-workers", "0", *common, "optim.epochs=1",
               exe=str(py), cwd=tmp_path)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert len(store.query(ResultsRoot(tmp_path / "r"), "SELECT * FROM results").to_pylist()) == 6
