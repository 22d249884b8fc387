"""Errors of the data layer. The CLI turns a `DataError` into one red line and exit code 2."""

from __future__ import annotations

from dplbench.errors import UserError


class DataError(UserError):
    """Input data absent, not in the expected layout, or inconsistent with its metadata."""


class MissingImagesError(DataError):
    """Images listed in a split are missing or undecodable (see `--skip-missing`)."""

    def __init__(self, dataset: str, bad: list[tuple[str, str]]) -> None:
        self.dataset = dataset
        self.bad = bad
        first = "; ".join(f"{path} ({why})" for path, why in bad[:5])
        super().__init__(
            f"{dataset}: {len(bad)} listed image(s) missing or undecodable, first: {first} "
            "(pass --skip-missing to skip them and record the count)"
        )


class CorruptShardError(DataError):
    """A shard could not be read, or one of its samples could not be decoded."""

    def __init__(self, url: str, key: str | None, reason: str) -> None:
        self.url = url
        self.key = key
        where = f"sample {key!r}" if key else "before its first sample"
        super().__init__(f"corrupt shard {url}: {where}: {reason}")
