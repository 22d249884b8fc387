"""Ctrl-C (SIGINT) or SIGTERM while a plan runs. The first asks the run to stop: Tune stops every
trial (`Stopper`), a unit this process trains (--no-ray) stops at its next step (`Interrupted`),
and no unit starts after it. What finished stays finished; each stopped job's epochs are kept (the
--no-ray run writes them; a trial's are in its checkpoint, and the resumed run writes them:
run/train_loop.py). The second signal ends the process at once (KeyboardInterrupt), with nothing
half-written (every file is published whole). Process-wide, like the signals themselves."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

_REQUESTED = threading.Event()
_SIGNAL: list[str] = []  # the name of the signal that asked, once one has


class Interrupted(BaseException):
    """Raised in a unit this process trains once a stop was asked for. A BaseException, as
    KeyboardInterrupt is: no handler of a job's own failures may take it for one."""


def requested() -> bool:
    return _REQUESTED.is_set()


def signal_name() -> str | None:
    return _SIGNAL[0] if _SIGNAL else None


def check() -> None:
    """Between two training steps: stop here if asked to."""
    if _REQUESTED.is_set():
        raise Interrupted


@contextlib.contextmanager
def catching(on_first: Callable[[str], None] | None = None) -> Iterator[None]:
    """While the block runs: the first SIGINT / SIGTERM asks the run to stop (`on_first(name)`
    says so), the second raises KeyboardInterrupt. Only the main thread can take signals; in any
    other the block runs as it is."""
    _REQUESTED.clear()
    _SIGNAL.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        if _REQUESTED.is_set():
            raise KeyboardInterrupt
        _SIGNAL.append(signal.Signals(signum).name)
        _REQUESTED.set()
        if on_first is not None:
            on_first(_SIGNAL[0])

    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    # Tune would take SIGINT for itself inside fit(); the Stopper below carries ours instead.
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env


def stopper():
    """A Tune stopper that ends the whole experiment once a stop was asked for."""
    from ray import tune

    class _Stop(tune.Stopper):
        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return requested()

    return _Stop()
