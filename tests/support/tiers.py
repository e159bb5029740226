"""Test tiers that mean what they say.

A fixture that starts something slow declares it with ``@starts(kind)``; every test using that
fixture (directly or through other fixtures) gets the marker ``kind`` and ``e2e``, so the marker
cannot be forgotten. ``make test-fast`` runs ``-m "not e2e"`` with ``RAKUTEN_TEST_TIER=fast``,
where a test that still starts a process fails and names the marker it needs.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

#: Markers of the slow kinds, each with what it means (registered in pyproject.toml).
SLOW_KINDS = ("s3", "training", "server", "process", "docker", "prometheus", "kind", "helm")
#: Fixture name -> the kind of thing it starts (filled by ``@starts``).
STARTED_BY: dict[str, str] = {}
FAST_TIER = os.environ.get("RAKUTEN_TEST_TIER") == "fast"

F = TypeVar("F", bound=Callable)


def starts(kind: str) -> Callable[[F], F]:
    """Mark a fixture function as one that starts ``kind`` (apply below ``@pytest.fixture``)."""
    if kind not in SLOW_KINDS:
        raise ValueError(f"unknown kind {kind!r}: one of {SLOW_KINDS}")

    def register(function: F) -> F:
        STARTED_BY[function.__name__] = kind
        return function
    return register


def markers_for(fixturenames: list[str]) -> set[str]:
    """The slow kinds a test needs, from the fixtures it uses."""
    return {STARTED_BY[name] for name in fixturenames if name in STARTED_BY}


class FastTierGuard:
    """In the fast tier, refuse to start a process (audit hook), with the fix in the message."""

    def __init__(self):
        self.current: str | None = None
        sys.addaudithook(self._audit)

    def _audit(self, event: str, args: tuple) -> None:
        if self.current and event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec"):
            test, self.current = self.current, None
            raise RuntimeError(f"{test} starts a process ({event}) in the fast tier: use the fixture that "
                               "starts it, or mark the test with the kind it needs "
                               f"({', '.join(SLOW_KINDS)})")
