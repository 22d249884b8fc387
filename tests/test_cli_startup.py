"""The commands that only read or plan start without torch, open_clip or Ray (issue #20): those
imports cost seconds the user waits for at every --help, listing and dry run. Each command runs in
a fresh interpreter so that nothing another test imported hides an eager import."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "open_clip", "ray", "torchvision", "webdataset")
PROBE = (
    f"HEAVY = {HEAVY!r}\n"
    + """
import json, sys
from dplbench.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit as e:
    code = e.code
except Exception as e:  # what the console script would print as one line and exit 1 on
    code = f"{type(e).__name__}: {e}"
else:
    code = 0
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}), file=sys.stderr)
"""
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["run", "--suite", "smoke", "--dry-run"],
        ["results", "ls"],
        ["results", "query", "SELECT 1 AS one"],
        ["report", "--help"],
        ["data", "ls", "{tmp}"],
        ["ablate"],
        ["ablate", "rer", "--suite", "smoke", "--dry-run"],
    ],
    ids=lambda a: " ".join(a),
)
def test_reading_and_planning_commands_import_no_framework(args, tmp_path, monkeypatch):
    monkeypatch.setenv("DPLBENCH_RESULTS", str(tmp_path / "results"))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    probe = json.loads(out.stderr.strip().splitlines()[-1])
    assert probe["code"] in (0, None), out.stderr
    assert probe["heavy"] == [], f"dplbench {' '.join(args)} imported {probe['heavy']}"
