"""The access log: one INFO line per HTTP request and per gRPC call, on ``rakuten.access``.

``<client> "<method> <path>" <status> <duration>ms id=<request id>``. The lines of 503
refusals (overloaded or not ready; gRPC ``UNAVAILABLE``) are rate-limited like error lines: at most
``--refusal_log_lines_per_second`` (10) a second, the next one written saying how many were
left out (0: no limit).
At four times capacity a server refuses about a thousand requests a second, and writing each
line took half the CPU of the refusal itself; ``rakuten_requests_total{status}`` still
counts every one.
"""
from __future__ import annotations

import logging
import time

from rakuten_common.logs import RateLimitedLog

access_logger = logging.getLogger("rakuten.access")

_HTTP = '%s "%s %s" %d %.1fms id=%s'
_GRPC = '%s "grpc %s" %s %.1fms id=%s'
_refusals = RateLimitedLog(access_logger, 10)


def limit_refusal_lines(per_second: int) -> None:
    """At most ``per_second`` refusal lines a second; 0: a line for every refusal."""
    _refusals.per_second = per_second or None


def log_http(client: tuple | None, method: str, path: str, status: int, started: float, rid: str) -> None:
    """The access line of an HTTP request (``started``: its ``time.perf_counter()`` at arrival)."""
    if access_logger.isEnabledFor(logging.INFO):
        write = _refusals.log if status == 503 else access_logger.log
        write(logging.INFO, _HTTP, f"{client[0]}:{client[1]}" if client else "-", method, path, status,
              (time.perf_counter() - started) * 1000, rid)


def log_grpc(peer: str, method: str, code: str, started: float, rid: str) -> None:
    """The access line of a gRPC call (``code``: its ``grpc.StatusCode`` name)."""
    if access_logger.isEnabledFor(logging.INFO):
        write = _refusals.log if code == "UNAVAILABLE" else access_logger.log
        write(logging.INFO, _GRPC, peer, method, code, (time.perf_counter() - started) * 1000, rid)
