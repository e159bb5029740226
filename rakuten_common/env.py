"""Environment-variable defaults for command-line options (how Kubernetes configures both entrypoints)."""
from __future__ import annotations

import os


def env_default(name: str, default):
    """``$name`` converted to the type of ``default``; ``default`` when unset or empty (``None``: kept as text)."""
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    return value if default is None else type(default)(value)
