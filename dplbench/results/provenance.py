"""What every result row records about where it came from: code, libraries, hardware."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parent.parent


@functools.cache
def code_version() -> str:
    """The git commit of this checkout (+"-dirty" with local changes), else the package version."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"dplbench-{_version('dplbench')}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


@functools.cache
def library_versions() -> str:
    names = ("dplbench", "torch", "torchvision", "open_clip_torch", "ray", "webdataset")
    out = {"python": platform.python_version(), **{n: _version(n) for n in names}}
    return json.dumps(out, sort_keys=True)


def hardware(device: torch.device | None = None, workers: int = 1) -> str:
    """E.g. "2x NVIDIA H200" or "1x cpu (16 cores, x86_64)": what one job ran on."""
    if device is not None and device.type == "cuda":
        return f"{workers}x {torch.cuda.get_device_name(device)}"
    return f"{workers}x cpu ({os.cpu_count()} cores, {platform.machine()})"
