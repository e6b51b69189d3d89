"""Options as data: a dataclass field carries its command-line flag and help text, and one table per config says
how every option is spelt, parsed and documented.

``crosstask train``, ``eval``, ``predict``, ``prepare``, ``bench`` and ``compare`` derive their flags from their
config dataclasses (``TrainConfig``'s sections, ``EvalOptions``, ``PredictOptions``, ``PrepareOptions``,
``BenchConfig``, ``CompareOptions``) through :func:`field_table`; the API takes the same dataclasses. Imports
nothing heavy (the command line builds its help from here).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crosstask_cli.errors import ConfigError


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = "",
    kwarg: str | None = None,
    cli_type: Any = None,
    metavar: str | None = None,
    argument: bool = False,
    short: str | None = None,
    required: bool = False,
):
    """A config field with its CLI flag ('' = derived from the name, None = no flag) and help text.

    ``kwarg``: the flat keyword (and 0.1.0 config.json key) when it differs from the field name; ``cli_type``: how
    the CLI reads it when that differs from the field's type (paths, comma lists); ``metavar``: how ``--help`` shows
    its value; ``argument``: a positional argument instead of an option; ``short``: a one-letter alias (``-n``);
    ``required``: the command line must give it (the API checks it when it is used)."""
    meta = {"help": help, "flag": flag, "kwarg": kwarg, "cli_type": cli_type, "metavar": metavar,
            "argument": argument, "short": short, "required": required}  # fmt: skip
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldInfo:
    """One row of an option table: where a setting lives and how the CLI spells it."""

    section: str
    name: str
    kwarg: str
    flag: str | None
    help: str
    type: Any  # the field's type, None removed from unions
    cli_type: Any
    optional: bool = False  # None is a valid value (``--set …=none`` means None only then)
    default: Any = None
    metavar: str | None = None
    argument: bool = False
    short: str | None = None
    required: bool = False

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def strip_none(tp: Any) -> Any:
    """``int | None`` → ``int``: the CLI reads the value type; None means unset."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def field_table(sections: Mapping[str, type] | type) -> dict[str, FieldInfo]:
    """Every field of a config by its keyword: ``sections`` maps section names to dataclasses (a nested config
    such as ``TrainConfig``), or is one dataclass (a flat one)."""
    if not isinstance(sections, Mapping):
        sections = {"": sections}
    table = {}
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            m = f.metadata
            if "help" not in m:
                continue  # not an option
            kwarg = m["kwarg"] or f.name
            flag = "--" + f.name.replace("_", "-") if m["flag"] == "" else m["flag"]
            tp = strip_none(hints[f.name])
            optional = type(None) in typing.get_args(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            table[kwarg] = FieldInfo(section, f.name, kwarg, flag, m["help"], tp, m["cli_type"] or tp, optional,
                                     default, m.get("metavar"), m.get("argument", False), m.get("short"),
                                     m.get("required", False))  # fmt: skip
    return table


def parse_value(info: FieldInfo, text: str, where: str = "--set") -> Any:
    """A text value in the field's type: numbers, true/false, comma lists for tuples; none/null for fields that may
    be unset (for the others, e.g. ``loss.consistency=none``, it is the string). ``where`` names the source in
    errors (``--set``, a spec file)."""
    t = text.strip()
    if t.lower() in ("none", "null") and (info.optional or info.type is not str):
        return None
    tp = info.type
    try:
        if tp is bool:
            if t.lower() in ("true", "1", "yes", "on"):
                return True
            if t.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(t)
        if tp is int:
            return int(t)
        if tp is float:
            return float(t)
        if typing.get_origin(tp) is tuple:
            items = [s.strip() for s in t.strip("()[]").split(",") if s.strip()]
            item_type = typing.get_args(tp)[0]
            return tuple(item_type(s) for s in items)
    except ValueError:
        raise ConfigError(f"{where} {info.path}={text}: not a valid {getattr(tp, '__name__', tp)}") from None
    return t


def check_positive_int(value: Any, flag: str, minimum: int = 1) -> None:
    """ConfigError naming ``flag`` unless ``value`` is an integer ≥ ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{flag} must be an integer ≥ {minimum}, got {value!r}")


def check_finite(value: Any, flag: str, low: float | None = None, high: float | None = None) -> None:
    """ConfigError naming ``flag`` unless ``value`` is a finite number in [low, high] (NaN never is)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{flag} must be in [{low}, {high}], got {value}")


def check_choice(value: Any, flag: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass(frozen=True)
class HyperParameter:
    """An option a component declares (a task's loss option, a weighting method's hyper-parameter): its config
    keyword (flag ``--`` + keyword with ``-``), default, help and the values it may take: ``choices``, or a number
    in [``low``, ``high``] (``low_open``/``high_open`` exclude the bound; ``integer`` asks for a whole number). NaN
    and infinities are never allowed."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def type(self) -> type:
        return type(self.default)

    def check(self, value: Any, label: str | None = None) -> None:
        """ConfigError naming ``label`` (default: the flag; the Python API names the keyword) unless ``value`` is
        allowed."""
        flag = label or self.flag
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(f"{flag} must be one of {', '.join(self.choices)}, got {value!r}")
            return
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if self.integer and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{flag} must be an integer, got {value!r}")
        if not number or not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value!r}")
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or above:
            raise ConfigError(f"{flag} must be {self.range_text()}, got {value}")

    def range_text(self) -> str:
        if self.integer and self.low is not None and self.high is None:
            return f"an integer ≥ {int(self.low) + (1 if self.low_open else 0)}"
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
