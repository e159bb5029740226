"""Small JSON documents read from storage (manifests, pointers): bounded in size, an object or refused."""
from __future__ import annotations

import json
from collections.abc import Callable


def load_object(text: str | bytes, limit: int, refuse: Callable[[str], Exception]) -> dict:
    """The JSON object in ``text``; ``refuse(problem)`` is raised when it is larger than ``limit``
    bytes, not JSON, or not an object."""
    if len(text) > limit:
        raise refuse(f"{len(text)} bytes, more than {limit}")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise refuse(f"not valid JSON ({exc}); truncated?") from None
    if not isinstance(data, dict):
        raise refuse("not a JSON object")
    return data
