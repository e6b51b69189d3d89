"""Typer parameters made from a config's option table (:mod:`crosstask_cli.options`): one place that turns a
field's flag, type, default and help into a command-line option, and the values the command line gives back into
the field's type."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from crosstask_cli.options import FieldInfo

UNSET = object()  # parameter(default=UNSET): the field's own default


def parameter(info: FieldInfo, default: Any = UNSET, name: str | None = None) -> inspect.Parameter:
    """The keyword-only Typer parameter of one option (an argument for positional fields). ``default``: what the
    command gets when the option is not given (the field's default unless said; None for "not given"); ``name``:
    the parameter's name (default the field's)."""
    value = info.default if default is UNSET else default
    kw = inspect.Parameter.KEYWORD_ONLY
    pname = name or info.name
    if info.required:
        value = ...
    if info.argument:
        many = typing.get_origin(info.type) in (tuple, list)
        annotation = list[info.cli_type] if many else info.cli_type
        if many and value == ():
            value = None  # no arguments given
        arg = typer.Argument(value, help=info.help, metavar=info.metavar, show_default=False)
        return inspect.Parameter(pname, kw, annotation=annotation, default=arg)
    if info.type is bool:
        # a flag; with no default ("not given" is a third state) also its --no- form
        paired = value is None or value is True
        decls = [info.flag if "/" in info.flag or not paired else f"{info.flag}/--no-{info.flag[2:]}"]
        decls += [info.short] if info.short else []
        return inspect.Parameter(pname, kw, annotation=bool | None if value is None else bool,
                                 default=typer.Option(value, *decls, help=info.help))  # fmt: skip
    decls = [info.flag, *([info.short] if info.short else [])]
    annotation = info.cli_type
    if info.cli_type is str and typing.get_origin(info.type) is tuple and isinstance(value, tuple):
        value = ",".join(map(str, value))  # a comma list on the command line
    if typing.get_origin(info.cli_type) is list:
        annotation = info.cli_type  # a repeatable option
        value = None if value == () else value
    elif typing.get_origin(info.type) is tuple and info.cli_type is not str:
        annotation = info.type  # fixed-length tuples (betas): Typer reads N values
    elif typing.get_origin(info.type) is list:
        annotation = info.type
    opt = typer.Option(value, *decls, help=info.help, metavar=info.metavar)
    return inspect.Parameter(pname, kw, annotation=annotation, default=opt)


def signature(params: Iterable[inspect.Parameter]) -> inspect.Signature:
    return inspect.Signature(list(params), return_annotation=None)


def from_cli(info: FieldInfo, value: Any) -> Any:
    """A command-line value in the field's type: paths as strings where the field holds a string, comma lists
    (``--tasks seg,depth``) as tuples, repeated options as tuples."""
    if value is None:
        return None
    if info.cli_type is Path and info.type is str:
        return str(value)
    if info.cli_type is str and typing.get_origin(info.type) is tuple:
        return tuple(t.strip() for t in str(value).split(",") if t.strip())
    if typing.get_origin(info.type) is tuple:
        return tuple(value)  # repeated options and arguments
    return value


def values(fields: dict[str, FieldInfo], options: dict[str, Any]) -> dict[str, Any]:
    """The options of a command call (by field name) → the config's keywords in their types (unknown names
    are left out)."""
    by_name = {f.name: f for f in fields.values()}
    # an option not given (None) takes the field's default: () for lists, whatever the dataclass says
    return {by_name[k].kwarg: from_cli(by_name[k], v) for k, v in options.items()
            if k in by_name and not (v is None and by_name[k].default is not None)}  # fmt: skip
