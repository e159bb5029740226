"""Optional API-key authentication and per-key rate limiting, shared by REST and gRPC.

Keys come from ``--api_keys_file`` (one per line, ``#`` comments; e.g. a mounted Kubernetes
Secret, re-read when the file changes) and/or ``--api_keys``. With no key configured,
authentication is off. A client sends ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
(gRPC: the same as metadata). Every key is compared in constant time (``hmac.compare_digest``,
all keys, no early exit); a refusal says only "unauthorized". Keys are never logged: a key
is named by the first 8 hex digits of its SHA-256 (``key_id``).

Rate limiting (``--rate_limit_rps``, ``--rate_limit_burst``) is a token bucket per key.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import threading
import time
from pathlib import Path

from rakuten_common.v2_client import read_keys_file  # one file format for the server and its clients

logger = logging.getLogger("rakuten.model_server")

#: How often the keys file's modification time is checked.
RELOAD_INTERVAL_SECONDS = 5.0


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def credential(authorization: str | None, api_key: str | None) -> str | None:
    """The key a client presented, from ``Authorization: Bearer`` or ``X-API-Key``."""
    if api_key:
        return api_key.strip()
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class ApiKeys:
    """The configured keys; ``check`` returns the matching key's id or ``None``."""

    def __init__(self, inline: list[str], path: Path | None):
        self._inline = [k.encode() for k in inline]
        self._path = Path(path) if path else None
        self._from_file: list[bytes] = []
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if self._path is not None:
            self._reload(force=True)
        if not self.enabled:
            logger.info("API keys: none configured, authentication is off")
        else:
            logger.info("API keys: %d configured, authentication is on (health probes stay open)", len(self._all()))

    @property
    def enabled(self) -> bool:
        return bool(self._inline or self._path is not None)

    def _all(self) -> list[bytes]:
        return self._inline + self._from_file

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_INTERVAL_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = os.stat(self._path).st_mtime
                if force or mtime != self._mtime:
                    self._from_file = [k.encode() for k in read_keys_file(self._path)]
                    if self._mtime is not None:
                        logger.info("API keys: %s changed, %d keys now", self._path, len(self._from_file))
                    self._mtime = mtime
            except OSError as exc:
                if force:
                    raise
                logger.warning("API keys: cannot re-read %s (%s); keeping the %d keys read before",
                               self._path, exc, len(self._from_file))

    def check(self, presented: str | None) -> str | None:
        """The id of the key ``presented`` matches, else ``None``."""
        if self._path is not None:
            self._reload()
        if not presented:
            return None
        given = presented.encode()
        match = None
        for key in self._all():
            if hmac.compare_digest(given, key) and match is None:
                match = key
        return key_id(match.decode()) if match is not None else None


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000):
        self.rate, self.burst, self.max_keys = rate, max(1, burst), max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> int:
        """0 if the request may go, else the seconds to wait (``Retry-After``)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_keys:  # keys rotate: forget the oldest
                self._buckets.pop(next(iter(self._buckets)))
        return max(1, math.ceil((1 - tokens) / self.rate))
