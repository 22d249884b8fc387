"""A rich progress bar that can be switched off (tests, logs) without changing call sites."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class _Task:
    def __init__(self, bar: RichProgress | None, task_id: int | None) -> None:
        self._bar, self._id = bar, task_id

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._id, n)


class Progress:
    """One bar per task on stderr; `enabled=False` makes every call a no-op."""

    def __init__(self, enabled: bool = True) -> None:
        self._bar = (
            RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            if enabled
            else None
        )

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[_Task]:
        tid = self._bar.add_task(description, total=total) if self._bar is not None else None
        yield _Task(self._bar, tid)

    @staticmethod
    @contextlib.contextmanager
    def maybe(progress: Progress | None, description: str, total: int) -> Iterator[_Task]:
        """A task on `progress`, or a silent one when there is no progress bar."""
        if progress is None:
            yield _Task(None, None)
        else:
            with progress.task(description, total) as t:
                yield t
