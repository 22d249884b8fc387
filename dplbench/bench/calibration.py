"""Saving `dplbench bench model`'s rows as this device's calibration (read by plan/cost.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import torch

from dplbench import storage
from dplbench.plan.cost import cache_dir, cpu_name, device_key_of
from dplbench.results.root import ResultsRoot


def device_key(device: torch.device | None = None) -> str:
    """The calibration file name of a device: `nvidia-h200`, `cpu-x86_64-2cores`."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device_key_of(
        torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    )


def save(rows: list[dict[str, Any]], device: torch.device, results_root: str | None) -> list[str]:
    memory = None
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory / 2**20
    payload = {
        "device": device_key(device),
        "memory_mib": memory,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    text = json.dumps(payload, indent=1)
    paths = [storage.write(cache_dir() / f"{payload['device']}.json", text)]
    if results_root:
        bench = ResultsRoot(results_root).bench_dir()
        paths.append(storage.write(storage.join(bench, f"{payload['device']}.json"), text))
    return paths
