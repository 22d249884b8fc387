"""Saving `dplbench bench model`'s rows as this device's calibration (read by plan/cost.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import torch

from dplbench import storage
from dplbench.plan.cost import cache_dir, cpu_name, device_key_of
from dplbench.results.root import ResultsRoot, calibration_file


def device_key(device: torch.device | None = None) -> str:
    """The calibration file name of a device: `nvidia-h200`, `cpu-x86_64-2cores`."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device_key_of(
        torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    )


def save(rows: list[dict[str, Any]], device: torch.device, root: ResultsRoot | None) -> list[str]:
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
    paths = [storage.write(calibration_file(cache_dir(), payload["device"]), text)]
    if root is not None:
        paths.append(storage.write(root.calibration(payload["device"]), text))
    return paths
