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

