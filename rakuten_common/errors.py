"""The project's own errors: one base, ``RakutenError``, and a subclass per area.

Every command catches ``RakutenError`` once, logs its message as one line and exits with its
documented code; any other exception is a bug and keeps its traceback. This module imports
nothing of the project, so every module can raise these without an import cycle.
"""
from __future__ import annotations


class RakutenError(Exception):
    """An error the project raises on purpose; its message is the one line a user reads."""


class StorageError(RakutenError, RuntimeError):
    """A storage URI that cannot be read or written as asked."""


class ArtifactError(RakutenError, RuntimeError):
    """A model version that is missing, incomplete, already present or fails verification."""


class PointerError(RakutenError, RuntimeError):
    """A champion pointer that cannot be read as one."""


class ProfileError(RakutenError, ValueError):
    """A reference profile that is malformed or does not match its model."""


class LabelError(RakutenError, ValueError):
    """A ``prdtypecode`` that is not one of the model's classes."""


class CaptureError(RakutenError, ValueError):
    """An inference capture record or file that cannot be used (``rakuten_common.captures``)."""


class ImageError(RakutenError, ValueError):
    """An image that cannot be used; ``reason`` is a short machine-readable label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
