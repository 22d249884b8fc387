"""The one shared option set of `run`, `tune` and `ablate`, generated from `LaunchRequest`'s
fields (dplbench/request.py): a field is an option, its help text is the option's, and a command
decorated with `launch_options` takes every one of them and receives the built request.

    @launch_options(extra=("methods",))
    def run(request: LaunchRequest) -> None: ...

Adding an execution option to all three commands is one field in request.py.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from dplbench.cli.common import csv_list, int_list
from dplbench.plan.config import parse_overrides
from dplbench.request import LaunchRequest, request_fields

OVERRIDES = "override"


def _cli_type(f: dataclasses.Field, tp: Any) -> Any:
    """The type Typer parses: comma lists as strings, repeatables as lists."""
    kind = f.metadata.get("kind")
    if kind in ("csv", "ints"):
        return str | None
    if kind == "multi":
        return list[str] | None
    return tp


def _parameter(f: dataclasses.Field, tp: Any) -> inspect.Parameter:
    decl = [f.metadata["flags"]] if "flags" in f.metadata else []
    opt = typer.Option(*decl, help=f.metadata.get("help", ""), show_default=True)
    default = None if f.metadata.get("kind") else f.default
    if default is dataclasses.MISSING:
        default = None
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[_cli_type(f, tp), opt],
    )


def _value(f: dataclasses.Field, raw: Any) -> Any:
    kind = f.metadata.get("kind")
    if kind == "csv":
        return tuple(csv_list(raw) or ())
    if kind == "ints":
        return tuple(int_list(raw) or ())
    if kind == "multi":
        return tuple(raw or ())
    return raw


def launch_options(extra: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorate a command taking `request: LaunchRequest` (and its own parameters): the shared
    options (plus the non-shared fields named in `extra`) and the trailing `key=value`
    overrides join its signature; the command receives the request built from them."""

    def decorate(fn: Callable) -> Callable:
        typed = [
            (f, tp)
            for f, tp in request_fields()
            if f.name != "overrides" and (f.metadata.get("shared", True) or f.name in extra)
        ]
        fields = [f for f, _ in typed]
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "request"]
        overrides = inspect.Parameter(
            OVERRIDES,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                list[str] | None,
                typer.Argument(help="method config overrides, key=value (e.g. iwtd.p_max=0.4)"),
            ],
        )
        hints = typing.get_type_hints(fn, include_extras=True)  # Typer reads resolved types
        params = [
            p.replace(
                kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)
            )
            for p in own
        ]
        params += [_parameter(f, tp) for f, tp in typed] + [overrides]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {f.name: _value(f, kwargs.pop(f.name)) for f in fields}
            values["overrides"] = parse_overrides(kwargs.pop(OVERRIDES) or [])
            return fn(request=LaunchRequest.of(**values), **kwargs)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
