"""The project's own error types. The CLI turns a `UserError` into one line and exit code 2;
anything else is a bug and shows as one (a traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message is one line that says what, where, and how to fix it."""


class ConfigError(UserError, ValueError):
    """A bad config file, key or value, or an unknown name on the command line."""
