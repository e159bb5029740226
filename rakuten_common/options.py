"""Command-line options declared once, on a settings dataclass.

Each field says its default, environment variable and meaning (``option(...)``); the argparse
parser and the settings object are both derived from it, so a default is written in exactly
one place. An environment variable replaces the default (how Kubernetes configures the
containers); a flag replaces both. Nothing here imports anything heavy, so ``--help`` is fast.

    @dataclass(frozen=True)
    class Settings:
        epochs: int = option(8, env="EPOCHS", help="training epochs")

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_options(parser, Settings)
    settings = from_args(Settings, parser.parse_args())
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from rakuten_common.env import parse_bool

_METAVARS = {int: "N", float: "NUM", Path: "PATH", str: "TEXT"}


def bounded(kind: type = int, minimum: float | None = None, maximum: float | None = None,
            positive: bool = False) -> Callable[[str], Any]:
    """An option type: ``kind(text)``, refused (with a message naming the bound) below ``minimum``,
    above ``maximum``, or not above 0 when ``positive``. NaN is refused by every bound."""

    def convert(text: str) -> Any:
        value = kind(text)
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        if minimum is not None and not value >= minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        if maximum is not None and not value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {maximum}")
        return value

    convert.metavar = _METAVARS.get(kind, "VALUE")  # type: ignore[attr-defined]  # read by add_options
    convert.bounds = _bounds_text(minimum, maximum, positive)  # type: ignore[attr-defined]  # by scripts/gen_docs.py
    return convert


def _bounds_text(minimum: float | None, maximum: float | None, positive: bool) -> str:
    """The bounds of a ``bounded`` type in words, for the generated reference (docs/reference)."""
    if minimum is not None and maximum is not None:
        return f"{minimum:g} to {maximum:g}"
    if minimum is not None:
        return f"at least {minimum:g}"
    if maximum is not None:
        return f"at most {maximum:g}"
    return "above 0" if positive else ""


# The bounded types the settings share.
AT_LEAST_ONE = bounded(int, minimum=1)
COUNT = bounded(int, minimum=0)
NOT_NEGATIVE = bounded(float, minimum=0.0)
POSITIVE = bounded(float, positive=True)
SHARE = bounded(float, 0.0, 1.0)
PORT = bounded(int, 1, 65535)


@dataclass(frozen=True)
class Option:
    help: str
    env: tuple[str, ...]
    type: Callable[[str], Any] | None
    metavar: str | None
    choices: tuple | None
    flag: str | None
    shown: str | None


def option(default: Any = MISSING, *, help: str, env: str | tuple[str, ...] = (),
           type: Callable[[str], Any] | None = None, metavar: str | None = None,
           choices: tuple | list | None = None, flag: str | None = None, shown: str | None = None,
           default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A dataclass field that is also a command-line option (and reads ``env`` if set).

    ``env`` may name several variables: the first one set wins. ``type`` defaults to the
    default's type; ``flag`` to ``--<name>`` in the parser's style; ``shown`` describes the
    default in ``--help`` when its value alone would mislead (e.g. "the CPU count").
    """
    spec = Option(help, (env,) if isinstance(env, str) else tuple(env), type, metavar,
                  tuple(choices) if choices else None, flag, shown)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": spec})


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and gives option help more room."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34, width=100)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return None


def _converter(field: dataclasses.Field, spec: Option, default: Any) -> Callable[[str], Any]:
    if spec.type is not None:
        return spec.type
    if isinstance(default, bool):
        return parse_bool
    if default is None:
        return str
    return type(default)


def _from_env(spec: Option, convert: Callable[[str], Any], parser: argparse.ArgumentParser) -> tuple[Any, bool]:
    for name in spec.env:
        text = os.environ.get(name, "").strip()
        if text:
            try:
                return convert(text), True
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"environment variable {name}={text!r}: {exc}")
    return None, False


def _shown(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def flag_of(field: dataclasses.Field, spec: Option, style: str) -> str:
    """The command-line flag of an ``option()`` field."""
    return spec.flag or "--" + (field.name.replace("_", "-") if style == "kebab" else field.name)


def add_options(parser: argparse.ArgumentParser, cls: type, style: str = "kebab",
                group_title: str | None = None) -> None:
    """Add one option per ``option()`` field of ``cls``; ``style`` is ``kebab`` or ``snake`` flags.

    The parser remembers the classes it was given (``option_classes``): ``scripts/gen_docs.py``
    writes the options reference from them."""
    parser.__dict__.setdefault("option_classes", []).append((cls, style, group_title))
    target = parser.add_argument_group(group_title) if group_title else parser
    for field in dataclasses.fields(cls):
        spec = field.metadata.get("option")
        if spec is None:
            continue
        default = _default(field)
        convert = _converter(field, spec, default)
        value, from_env = _from_env(spec, convert, parser)
        if not from_env:
            value = default
        flag = flag_of(field, spec, style)
        where = f"; env {' or '.join(spec.env)}" if spec.env else ""
        shown = _shown(value) if from_env or spec.shown is None else spec.shown
        help_text = f"{spec.help} (default: {shown}{where})"
        if isinstance(default, bool):  # --flag alone means true; --flag=false/0/no/off
            target.add_argument(flag, dest=field.name, default=value, type=parse_bool, nargs="?", const=True,
                                metavar="BOOL", help=help_text)
            continue
        metavar = spec.metavar or ("{" + ",".join(map(str, spec.choices)) + "}" if spec.choices
                                   else getattr(convert, "metavar", None)
                                   or next((name for kind, name in _METAVARS.items()
                                            if isinstance(convert, type) and issubclass(convert, kind)), "VALUE"))
        target.add_argument(flag, dest=field.name, default=value, type=convert, choices=spec.choices,
                            metavar=metavar, help=help_text)


def from_args(cls: type, args: argparse.Namespace, **extra: Any):
    """An instance of ``cls`` from the parsed ``args`` (plus ``extra`` fields)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if "option" in f.metadata and hasattr(args, f.name)}
    return cls(**values, **extra)


def from_environment(cls: type, **extra: Any):
    """``cls`` with each option from its environment variable, else its default (no command line)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_options(parser, cls)
    return from_args(cls, parser.parse_args([]), **extra)
