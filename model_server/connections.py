"""Limits uvicorn does not have, at the HTTP connection level (its httptools protocol, extended).

- a header timeout: a client has ``--header_timeout_seconds`` from its first byte (or from
  connecting) to finish a request's headers, then the connection is closed. Uvicorn's
  keep-alive timer stops at the first byte, so a client sending a header byte every few
  seconds held a connection forever (20,500 such connections exhausted the descriptors);
- a bound on open connections (``--max_connections``): past it, the connection idle the
  longest (between requests or still sending headers) is closed to make room, so slow
  clients cannot lock out the others, and descriptors never run out;
- limits on the request line and headers (``--max_header_bytes``, ``--max_headers``):
  ``431`` (``414`` for the URL) instead of buffering without end;
- health probes answered as soon as their headers are parsed, in the read callback itself:
  no ASGI task to schedule behind the inference work queued on the event loop;
- inference requests refused there too when admission is full (``Limits.refuse``): under
  overload most requests are refusals, and a refusal without an ASGI task costs a fraction of
  one with it, which leaves the CPU to the admitted ones. Their body is skipped unread.

Requests that are being answered are never closed by these.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger("rakuten.model_server")


class HeaderLimitExceeded(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class FastAnswer(NamedTuple):
    """A response written by the protocol itself, without the ASGI app."""

    status: int
    body: bytes
    request_id: str
    close: bool
    headers: tuple[tuple[bytes, bytes], ...] = ()


class Limits:
    """Settings and shared state of every connection of one server."""

    def __init__(self, max_connections: int, header_timeout: float, max_header_bytes: int, max_headers: int):
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.idle: OrderedDict[int, GuardedHttpToolsProtocol] = OrderedDict()  # oldest first
        self.open = 0
        self.evicted = 0
        #: raw paths of GET requests answered at once, and the answerer: (path, headers) -> FastAnswer
        self.probe_paths: frozenset[bytes] = frozenset()
        self.probe: Callable[[str, list], FastAnswer] | None = None
        #: raw path of POST requests that may be refused at once: (headers, client) -> FastAnswer, or None to serve
        self.refusal_path: bytes | None = None
        self.refuse: Callable[[list, tuple | None], FastAnswer | None] | None = None


def protocol_class(limits: Limits) -> type:
    """The protocol class to give ``uvicorn.Config(http=...)``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: Limits

    # -- connection bound ---------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        limits = self.limits
        self._counted = False
        if limits.open >= limits.max_connections and not self._evict_one():
            transport.abort()  # every connection is busy answering: refuse this one
            return
        limits.open += 1
        self._counted = True
        self._header_bytes = 0
        self._header_timer = None
        self._reading_headers = False
        self._limit: HeaderLimitExceeded | None = None
        self._fast = False
        super().connection_made(transport)
        self._evictable()
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        if self._counted:
            self._counted = False
            self.limits.open -= 1
            self._busy()
            super().connection_lost(exc)

    def _evict_one(self) -> bool:
        limits = self.limits
        while limits.idle:
            _, victim = limits.idle.popitem(last=False)
            if not victim.transport.is_closing():
                limits.evicted += 1
                if limits.evicted % 1000 == 1:
                    logger.warning("%d connections open (--max_connections): closing the longest idle ones "
                                   "to make room (%d so far)", limits.open, limits.evicted)
                victim.transport.abort()
                return True
        return False

    def _evictable(self) -> None:
        """Between requests or receiving headers: may be closed to make room for a new connection."""
        self.limits.idle[id(self)] = self
        self.limits.idle.move_to_end(id(self))

    def _busy(self) -> None:
        self.limits.idle.pop(id(self), None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- parsing, with limits ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no WebSocket here: the request goes on as a plain one
        except httptools.HttpParserError:  # malformed, or a limit raised by a callback below
            limit, self._limit = self._limit, None
            self._refuse(limit or HeaderLimitExceeded(400, "Invalid HTTP request received."))
            return
        if self._reading_headers:
            # Armed only for headers split over reads: most requests come whole, without a timer.
            self._arm_header_timer()

    def _refuse(self, exc: HeaderLimitExceeded) -> None:
        message = str(exc).encode()
        self.transport.write(b"".join([
            STATUS_LINE[exc.status], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: ", str(len(message)).encode(), b"\r\nconnection: close\r\n\r\n", message]))
        self.transport.close()

    def _limit_exceeded(self, status: int, message: str) -> None:
        self._limit = HeaderLimitExceeded(status, message)
        raise self._limit

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._reading_headers = True
        super().on_message_begin()
        self._evictable()

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._limit_exceeded(414, f"request URL longer than {self.limits.max_header_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            self._limit_exceeded(431, f"request headers larger than {self.limits.max_header_bytes} bytes")
        if len(self.headers) >= self.limits.max_headers:
            self._limit_exceeded(431, f"more than {self.limits.max_headers} request headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._busy()
        answer = self._fast_answer()
        self._fast = answer is not None
        if self._fast:
            return self._write_fast(answer)
        super().on_headers_complete()

    def _fast_answer(self) -> FastAnswer | None:
        """A probe's answer, or an inference request's refusal; ``None`` to go on to the ASGI app."""
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            return None  # answers go out in order: only when nothing is pending on this connection
        limits, method = self.limits, self.parser.get_method()
        if method == b"GET" and self.url in limits.probe_paths:
            return limits.probe(self.url.decode("latin-1"), self.headers)
        if method == b"POST" and self.url == limits.refusal_path and limits.refuse is not None:
            return limits.refuse(self.headers, self.client)
        return None

    def _write_fast(self, answer: FastAnswer) -> None:
        close = answer.close or not self.parser.should_keep_alive()
        self.transport.write(b"".join([
            STATUS_LINE[answer.status], b"content-type: application/json\r\ncontent-length: ",
            str(len(answer.body)).encode(), b"\r\nx-request-id: ", answer.request_id.encode(), b"\r\n",
            *(name + b": " + value + b"\r\n" for name, value in answer.headers),
            b"connection: close\r\n\r\n" if close else b"\r\n", answer.body]))
        self.server_state.total_requests += 1
        if close:
            self.transport.close()
        else:
            self._evictable()  # a body still to skip must not hold a connection slot

    def on_body(self, body: bytes) -> None:
        if not self._fast:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._fast:
            return super().on_message_complete()
        self._fast = False
        if not self.transport.is_closing():  # kept alive, as after any response
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)
            self._evictable()

    def on_response_complete(self) -> None:
        more = bool(self.pipeline)
        super().on_response_complete()
        if not more and not self.transport.is_closing():
            self._evictable()  # kept alive: uvicorn's keep-alive timer closes it when idle too long
