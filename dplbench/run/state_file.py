"""Reading the state files a run wrote (a job's newest checkpoint, its final trained state): only
as weights (`torch.load(weights_only=True)`), and anything else as one line naming the file, what
is wrong with it and the fix. A results root may be shared, so a file there is not trusted to be
ours: it is never loaded unsafely, and no message suggests it."""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

from dplbench import storage
from dplbench.errors import UserError


class StateFileError(UserError):
    """A state file that cannot be used: not weights only, truncated, or another job's."""


def load_state(path: str, device: torch.device | str, job_id: str, fix: str) -> dict[str, Any]:
    """The state dict in `path` (local or object store), written for job `job_id`. `fix`: what
    to do about a bad file (e.g. delete it to retrain from scratch)."""
    try:
        data = storage.read_bytes(path)
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused what the file would build or run
        raise StateFileError(
            f"{path}: not a weights-only state file (it holds Python objects, which dplbench "
            f"never loads); {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StateFileError(
            f"{path}: unreadable, truncated or not a state file ({first}); {fix}"
        ) from None
    if not isinstance(state, dict):
        raise StateFileError(f"{path}: not a state file (a {type(state).__name__}); {fix}")
    owner = state.get("job_id")
    if owner is not None and owner != job_id:
        raise StateFileError(f"{path}: the state of job {owner}, not of job {job_id}; {fix}")
    return state
