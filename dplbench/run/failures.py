"""A failed job reads as one line; its full traceback goes to a log file under the results root.

On a Ray Train worker an exception reaches the driver wrapped several times
(`RayTaskError(WorkerGroupError)` -> `worker_failures[rank]` -> ours). `root_cause` unwraps it;
`one_line` says what failed, where, and how to fix it, with the log path. The worker writes the
traceback it saw (`write_log`); the driver appends Ray's own report when it has one.
"""

from __future__ import annotations

import re
import traceback
from datetime import datetime, timezone

from dplbench import storage
from dplbench.errors import UserError


class JobFailed(RuntimeError):
    """A job's failure as one line (what, where, how to fix) and its log file."""

    def __init__(self, line: str, log: str | None = None) -> None:
        super().__init__(line + (f" (log: {log})" if log else ""))
        self.line, self.log = line, log

    def __reduce__(self):  # crosses process boundaries (Ray) with both fields
        return (JobFailed, (self.line, self.log))


class JobStopped(JobFailed):
    """A job an interrupt stopped (run/interrupt.py): not a failure; its epochs so far are
    written (marked stopped) and --resume continues it from its last checkpoint."""

    def __init__(self, line: str = "interrupted", log: str | None = None) -> None:
        super().__init__(line, log)

    def __reduce__(self):
        return (JobStopped, (self.line, self.log))


def log_line(error: str | None) -> str | None:
    """The log path a failure line ends with: "... (log: PATH)"."""
    if not error or "(log: " not in error:
        return None
    return error.rsplit("(log: ", 1)[1].rstrip(")")


def root_cause(exc: BaseException) -> BaseException:
    """The innermost error behind Ray's wrappers: `.cause` (RayTaskError), `worker_failures`
    (Train's WorkerGroupError: the lowest rank's), then `__cause__`. The project's own errors stop
    the walk: their message already is the one line (a CorruptShardError names shard and sample;
    the decoder's error it wraps does not)."""
    seen: set[int] = set()
    while id(exc) not in seen and not isinstance(exc, (JobFailed, UserError)):
        seen.add(id(exc))
        failures = getattr(exc, "worker_failures", None)
        if failures:
            exc = failures[min(failures)]
            continue
        nxt = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(nxt, BaseException):
            break
        exc = nxt
    return exc


# PyTorch re-raises a DataLoader worker's error as "Caught <Type> in DataLoader worker process
# <n>.\nOriginal Traceback (most recent call last): ..." (torch/_utils.py ExceptionWrapper), as a
# RuntimeError when <Type> cannot be built from that one string (ours take structured fields).
_LOADER_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.")


def _loader_worker_cause(text: str) -> str | None:
    """The original `Type: message` inside a re-raised DataLoader worker error."""
    m = _LOADER_WORKER.match(text)
    if not m:
        return None
    lines = text.splitlines()
    head = re.compile(rf"^(?:[\w.]+\.)?{m.group(1)}: ")
    for i in range(len(lines) - 1, -1, -1):  # the traceback's last "Type: message" line
        if head.match(lines[i]):
            message = " ".join(" ".join(lines[i:]).split(": ", 1)[1].split())
            return f"{m.group(1)}: {message}"
    return None


def one_line(exc: BaseException) -> str:
    """`Type: message` of the root cause, on one line (JobFailed: its line and log), also when the
    error was raised in a DataLoader worker process."""
    root = root_cause(exc)
    if isinstance(root, JobFailed):
        return str(root)
    loader = _loader_worker_cause(str(root))
    if loader is not None:
        return loader[:1000]
    text = " ".join(str(root).split()) or "(no message)"
    return f"{type(root).__name__}: {text}"[:1000]


def out_of_memory_line(job_id: str, exc: BaseException) -> str | None:
    """For a CUDA out-of-memory error: which job, how much memory, and the knobs that help."""
    import torch

    if not isinstance(exc, torch.cuda.OutOfMemoryError):
        return None
    try:
        dev = torch.cuda.current_device()
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
        total = torch.cuda.get_device_properties(dev).total_memory / 2**30
        where = f"{peak:.1f} of {total:.1f} GiB at peak on {torch.cuda.get_device_name(dev)}"
    except (RuntimeError, AssertionError):
        where = "memory unknown"
    return (
        f"job {job_id} ran out of GPU memory ({where}); lower optim.batch_size (per worker), "
        "spread it over more --workers, or pack fewer jobs per GPU"
    )


def write_log(path: str, header: str, exc: BaseException) -> str:
    """The failure's full traceback, with a header saying which job and when."""
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return storage.write(path, f"{header}\n{when}\n\n{trace}")
