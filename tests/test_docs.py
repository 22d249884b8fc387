"""Every reference to a doc or a section of one exists: `docs/<file>.md §N` anywhere in the code,
configs and docs names a file with a `## §N` heading; Markdown links between docs resolve; the
README stays a newcomer's page."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"docs/([\w-]+\.md)(?:\)?\s*§(\d+))?")
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")
SOURCES = ("dpl", "dplbench", "tests", "tools", "docs")


def _files() -> list[Path]:
    out = [ROOT / "README.md"]
    for folder in SOURCES:
        for suffix in ("*.py", "*.md", "*.yaml"):
            out += [p for p in (ROOT / folder).rglob(suffix) if "__pycache__" not in p.parts]
    return out


def _sections(doc: Path) -> set[str]:
    return set(re.findall(r"^## §(\d+)\b", doc.read_text(), flags=re.M))


def test_every_cited_doc_and_section_exists():
    missing = []
    for path in _files():
        text = path.read_text(errors="replace")
        for name, section in CITE.findall(text):
            if name in ("RUN.md", "TRAIN.md"):  # the upstream releases' docs, cited in recipes
                continue
            doc = ROOT / "docs" / name
            where = f"{path.relative_to(ROOT)}: docs/{name}{f' §{section}' if section else ''}"
            if not doc.is_file() or (section and section not in _sections(doc)):
                missing.append(where)
    assert not missing, missing


def test_markdown_links_between_docs_resolve():
    broken = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(path.read_text()):
            if "://" not in target and not (path.parent / target).is_file():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_readme_is_a_newcomers_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12_000
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]


def test_the_readme_lists_every_shared_launch_option():
    # the options are generated from LaunchRequest's fields; the README's list is written by hand
    from dplbench.request import request_fields

    readme = (ROOT / "README.md").read_text()
    shared = readme.split("share every execution option:", 1)[1].split("and `key=value`", 1)[0]
    listed = set(re.findall(r"--[a-z][a-z-]*", shared))
    missing = []
    for f, _ in request_fields():
        if not f.metadata.get("shared", True):  # run's own (--methods) and the key=value list
            continue
        flags = f.metadata.get("flags", "--" + f.name.replace("_", "-")).split("/")
        if not listed & set(flags):
            missing.append(flags[0])
    assert not missing, f"README.md's option list lacks {missing}"


@pytest.mark.slow
@pytest.mark.cluster
def test_the_readme_python_example_runs_as_written_and_prints_the_summary(tmp_path):
    """README "From Python": its block, run as written from a fresh folder (local Ray, the smoke
    suite), prints one summary row per method with base, novel and HM."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [ast.literal_eval(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["method"] for r in rows) == ["coop", "dpl", "zsclip"]
    for r in rows:
        assert r["seeds"] == 1 and 0 <= r["novel"] <= 100
        assert r["HM"] == pytest.approx(
            2 * r["base"] * r["novel"] / (r["base"] + r["novel"]), abs=0.01
        )
