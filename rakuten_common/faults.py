"""A test hook: the process kills itself (SIGKILL) right after a named step.

``RAKUTEN_KILL_AFTER=<step>`` is for fault-injection tests only (``tests/lifecycle/test_faults.py``):
it lets a test stop a real training job exactly where a node failure or an OOM kill could, with
no chance to clean up. Steps: ``uploaded`` (the first file of a version is in storage, no manifest
yet), ``published`` (``manifest.json`` written, nothing registered), ``registered`` (registered,
the MLflow run still RUNNING). Unset (always, outside tests), it does nothing.
"""
from __future__ import annotations

import os
import signal

KILL_AFTER = "RAKUTEN_KILL_AFTER"


def kill_point(step: str) -> None:
    if os.environ.get(KILL_AFTER) == step:
        os.kill(os.getpid(), signal.SIGKILL)
