"""Environment variables as typed values: how Kubernetes configures both entrypoints."""
from __future__ import annotations

import os

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False (any case); anything else is an error."""
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean: use one of {sorted(_TRUE | _FALSE)}")


def env_bool(name: str, default: bool) -> bool:
    """``$name`` as a boolean (``parse_bool``); ``default`` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}: {exc}") from None


def env_default(name: str, default):
    """``$name`` converted to the type of ``default``; ``default`` when unset or empty.

    Booleans go through ``parse_bool`` (so ``"false"`` is False); ``None`` keeps the text.
    """
    if isinstance(default, bool):
        return env_bool(name, default)
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    return value if default is None else type(default)(value)
