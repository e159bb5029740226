"""Admission control: a bound on queued work, in products (rows) and in request bytes.

A request is admitted before its body is read if one more row and its announced bytes fit;
it then holds one provisional row until its body is parsed, when the row count becomes the
number of products it holds (refused if those no longer fit). Beyond either bound the answer
is a fast ``503`` with ``Retry-After``: no body is read, nothing is decoded, nothing queues.
Rows are released when the model has answered (or the request failed or was dropped), bytes
when the answer is sent. Thread-safe: rows are counted where bodies are parsed, on the
preprocessing threads.

Deadlines (``Deadline``): every admitted request has one, the server's
``--request_timeout_seconds`` or sooner if the client asks (HTTP header ``timeout`` in
seconds, gRPC deadline). Work still queued at the deadline is dropped.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from model_server import metrics

#: HTTP header by which a client shortens its deadline (seconds, e.g. ``timeout: 2.5``).
TIMEOUT_HEADER = "timeout"


class Overloaded(Exception):
    """The server is at its admission bound: answer 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request's deadline passed before its answer was ready (HTTP 504, gRPC DEADLINE_EXCEEDED)."""


@dataclass
class Deadline:
    """A point in ``time.monotonic()`` time, and the budget it came from."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def remaining(self) -> float:
        return self.at - time.monotonic()


def parse_timeout(value: str | None, default: float) -> float:
    """The client's ``timeout`` header (seconds) capped at ``default``; ``ValueError`` if malformed."""
    if value is None:
        return default
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"header {TIMEOUT_HEADER} must be a positive number of seconds, got {value!r}")
    return min(seconds, default)


class Admission:
    """Counts admitted rows and bytes against their bounds."""

    def __init__(self, max_rows: int, max_bytes: int, model_name: str):
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.rows = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._rows_gauge = metrics.QUEUED_ROWS.labels(model_name=model_name)
        self._bytes_gauge = metrics.INFLIGHT_BYTES.labels(model_name=model_name)
        self._dropped = {reason: metrics.DROPPED.labels(model_name=model_name, reason=reason)
                         for reason in metrics.DROP_REASONS}

    def admit(self, announced_bytes: int) -> None:
        """Take one provisional row and ``announced_bytes``, or raise ``Overloaded``."""
        with self._lock:
            reason = self._full(announced_bytes)
            if reason is None:
                self.rows += 1
                self.bytes += announced_bytes
                self._publish()
                return
        raise self._overloaded(reason)

    def refusal(self, announced_bytes: int) -> Overloaded | None:
        """What ``admit`` would raise now (counted as dropped), without admitting anything."""
        with self._lock:
            reason = self._full(announced_bytes)
        return None if reason is None else self._overloaded(reason)

    def _overloaded(self, reason: str) -> Overloaded:
        """Count one request refused for ``reason``; the error that tells its client."""
        self.dropped("overloaded")
        return Overloaded(f"server busy: {reason}; retry later")

    def _full(self, announced_bytes: int) -> str | None:
        if self.rows + 1 > self.max_rows:
            return f"{self.rows} products are queued, the bound is {self.max_rows}"
        if self.bytes and self.bytes + announced_bytes > self.max_bytes:
            return f"{self.bytes} request bytes are in flight, the bound is {self.max_bytes}"
        return None

    def grow_bytes(self, more: int) -> None:
        """Bytes beyond those announced (chunked bodies); never refused, bounded by the body limit."""
        with self._lock:
            self.bytes += more
            self._publish()

    def resize(self, rows: int) -> None:
        """Turn the provisional row into ``rows`` (the request's products), or raise ``Overloaded``."""
        with self._lock:
            queued = self.rows - 1
            if queued and queued + rows > self.max_rows:  # alone, any request the codec accepts fits
                raise self._overloaded(f"{queued} products are queued, {rows} more would pass the bound of "
                                       f"{self.max_rows}")
            self.rows += rows - 1
            self._publish()

    def release(self, rows: int, nbytes: int) -> None:
        with self._lock:
            self.rows -= rows
            self.bytes -= nbytes
            self._publish()

    def dropped(self, reason: str) -> None:
        """Count a request dropped without (further) work: ``rakuten_dropped_requests_total{reason}``."""
        self._dropped[reason].inc()

    def _publish(self) -> None:
        self._rows_gauge.set(self.rows)
        self._bytes_gauge.set(self.bytes)


class Ticket:
    """One admitted request's share of the bounds: released exactly once."""

    __slots__ = ("admission", "rows", "bytes", "deadline")

    def __init__(self, admission: Admission, nbytes: int, deadline: Deadline):
        admission.admit(nbytes)
        self.admission, self.rows, self.bytes, self.deadline = admission, 1, nbytes, deadline

    def add_bytes(self, more: int) -> None:
        self.admission.grow_bytes(more)
        self.bytes += more

    def set_rows(self, rows: int) -> None:
        if self.rows == 1:
            self.admission.resize(rows)
            self.rows = rows

    def release_rows(self) -> None:
        """Called when the model has answered: later requests may queue in this one's place."""
        rows, self.rows = self.rows, 0
        if rows:
            self.admission.release(rows, 0)

    def release(self) -> None:
        rows, nbytes, self.rows, self.bytes = self.rows, self.bytes, 0, 0
        if rows or nbytes:
            self.admission.release(rows, nbytes)
