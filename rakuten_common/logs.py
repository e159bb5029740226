"""One log format for every process of the project: ``<time> <LEVEL> <logger>: <message>``.

Records below WARNING go to stdout, warnings and errors to stderr. Libraries that install
their own handlers (KServe, uvicorn, MLflow) are brought under the same handlers, so a
training job, a model server and a test log read alike.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

# Libraries whose own handlers (and formats) are replaced by ours; their records propagate to root.
_ADOPTED = ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access",
            "mlflow", "alembic", "huey", "absl", "py.warnings")


class _Below:
    """Handler filter: only records under ``level``."""

    def __init__(self, level: int):
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def _handler(stream, below: int | None = None, at_least: int = logging.NOTSET) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.setLevel(at_least)
    if below is not None:
        handler.addFilter(_Below(below))
    return handler


def configure_logging(level: str | int | None = None, *, access_log: bool = True, timings: bool = False) -> None:
    """Install the project's handlers on the root logger (idempotent).

    ``level``: default ``$LOG_LEVEL`` or INFO. ``access_log``: one uvicorn line per HTTP request.
    ``timings``: KServe's per-request ``kserve.trace`` timing lines (off: two lines per request).
    """
    level = level or os.environ.get("LOG_LEVEL", "").strip().upper() or "INFO"
    root = logging.getLogger()
    root.handlers = [_handler(sys.stdout, below=logging.WARNING),
                     _handler(sys.stderr, at_least=logging.WARNING)]
    root.setLevel(level)
    adopt_library_loggers()
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.INFO if timings else logging.WARNING)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)


def adopt_library_loggers() -> None:
    """Route the adopted libraries' loggers to ours (call again after importing MLflow: it resets them).

    KServe configures its own logging only when its logger has no handler: a ``NullHandler``
    keeps it from doing so while records still propagate to the root handlers.
    """
    for name in _ADOPTED:
        logger = logging.getLogger(name)
        logger.handlers = [logging.NullHandler()]
        logger.propagate = True


class RateLimitedLog:
    """At most ``per_second`` lines a second on ``logger`` (``None``: no limit); how many were left
    out is said on the next line written (the rule for error lines and for refusals' access lines)."""

    def __init__(self, logger: logging.Logger, per_second: int | None, clock=time.monotonic):
        self.logger, self.per_second, self._clock = logger, per_second, clock
        self._window = 0
        self._lines = 0
        self._skipped = 0
        self._lock = threading.Lock()

    def log(self, level: int, message: str, *args, exc_info=None) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = int(self._clock())
        with self._lock:
            if now != self._window:
                self._window, self._lines = now, 0
            if self.per_second is not None and self._lines >= self.per_second:
                self._skipped += 1
                return
            self._lines += 1
            skipped, self._skipped = self._skipped, 0
        if skipped:
            message += f" ({skipped} similar lines left out)"
        self.logger.log(level, message, *args, exc_info=exc_info)
