"""Methods from outside the repository: the worked example of docs/adding-a-method.md §4, its
files as the page writes them, installed as a package (its recipe as package data, its entry
point), runs the page's commands through Ray into the results and the report, and its parameter
trains; broken or unknown plug-ins are one line, exit 2. And the package itself: `pip install .`
(not editable) outside the checkout plans and runs."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dplbench.results import store
from dplbench.results.root import ResultsRoot

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info")

DOC = ROOT / "docs" / "adding-a-method.md"


def _doc_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block of the worked example, docs/adding-a-method.md §4."""
    section = DOC.read_text().split("\n## §4 ", 1)[1].split("\n## §", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)


def _doc_files() -> dict[str, str]:
    """The page's files: the blocks whose first line is a comment naming their path."""
    files = {}
    for _, text in _doc_blocks():
        first = text.split("\n", 1)[0]
        if re.fullmatch(r"# lab-methods/[\w./-]+", first):
            files[first[2:]] = text
    return files


def _installed(tmp_path: Path) -> Path:
    """The page's package written as its files say and installed (not editable: its package data
    must ship) into a folder of its own; returns that folder, the PYTHONPATH that imports it."""
    for name, text in _doc_files().items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_text(text)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(site), str(tmp_path / "src" / "lab-methods")]  # fmt: skip
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    return site


def _cli(*args, env=None, cwd=None, exe=None):
    cmd = [exe or sys.executable, "-m", "dplbench.cli", *args]
    full = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=cwd, timeout=600)


def test_the_worked_example_is_a_whole_package():
    files = _doc_files()
    assert set(files) == {
        "lab-methods/pyproject.toml",
        "lab-methods/lab_methods/__init__.py",
        "lab-methods/lab_methods/model.py",
        "lab-methods/lab_methods/coop_temp.yaml",
    }
    commands = [ln for lang, text in _doc_blocks() if lang == "bash" for ln in text.splitlines()]
    assert commands[0] == "pip install -e ./lab-methods"


@pytest.mark.slow
@pytest.mark.cluster
def test_the_worked_example_runs_as_written_on_ray_and_its_parameter_trains(tmp_path):
    """docs/adding-a-method.md §4, as a reader runs it: the package installed (here into a
    folder on PYTHONPATH, where the page says `pip install -e`), each `dplbench` command of the
    page run as written from a fresh folder, then its check script."""
    site = _installed(tmp_path)
    assert (site / "lab_methods" / "coop_temp.yaml").is_file()  # the recipe was installed
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    work = tmp_path / "work"
    work.mkdir()
    bash = [ln for lang, text in _doc_blocks() if lang == "bash" for ln in text.splitlines()]
    outputs = []
    for line in bash[1:]:
        argv = shlex.split(line)
        assert argv[0] == "dplbench", line
        out = _cli(*argv[1:], env=env, cwd=work)
        assert out.returncode == 0, line + "\n" + out.stdout + out.stderr
        outputs.append(out.stdout)
    (job,) = [json.loads(line) for line in outputs[-1].splitlines()]
    assert job["method"] == "coop_temp" and job["config"]["prompts"]["n_ctx_text"] == 2
    assert job["config"]["optim"]["epochs"] == 10  # recipe (3) < the smoke suite (10)

    res = work / "results"
    rows = store.query(
        ResultsRoot(res), "SELECT method, job_id FROM results ORDER BY ALL"
    ).to_pylist()
    assert {r["method"] for r in rows} == {"coop_temp", "zsclip"}
    assert {r["job_id"] for r in rows if r["method"] == "coop_temp"} == {job["job_id"]}
    import torch

    state = torch.load(res / "checkpoints" / job["job_id"] / "final.pt", weights_only=True)
    assert abs(float(state["log_temperature"])) > 1e-3  # trained: it moved from 0

    (check,) = [text for lang, text in _doc_blocks() if lang == "python" and "check.py" in text]
    script = work / "check.py"
    script.write_text(check)
    printed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             cwd=work, check=True).stdout.split()  # fmt: skip
    assert printed[0].endswith(f"{job['job_id']}/final.pt")
    assert float(printed[1]) == pytest.approx(float(state["log_temperature"]))

    report = _cli("report", "--suite", "smoke", "--results", str(res), env=env)
    assert report.returncode == 0, report.stderr
    assert "| synthetic | coop_temp |" in (res / "reports" / "smoke" / "report.md").read_text()


def test_an_installed_entry_point_is_found_without_flags(tmp_path):
    env = {"PYTHONPATH": str(_installed(tmp_path))}
    out = _cli("run", "--methods", "coop_temp", "--dry-run", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["method"] == "coop_temp"


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
