"""The ASGI layer in front of the app: everything decided before a request reaches KServe's parts.

In order, for every HTTP request:

1. a request id: the client's ``X-Request-ID`` if sane, else a new one; it is sent back on
   every response and written in the access line and in error logs;
2. health probes (``/v2/health/live|ready``, ``/v2/models/<name>/ready``) and ``/metrics``
   (when on this port) are answered here at once, unauthenticated, never behind inference work
   (probes, and refusals when admission is full, are usually answered earlier still, by the
   HTTP protocol: ``fast_probe`` and ``fast_refusal``, see ``model_server.connections``);
3. authentication (API keys, if configured) then the per-key rate limit: 401 / 429;
4. for inference: body size (413), the client's ``timeout`` header, admission (a fast 503 with
   ``Retry-After``, before the body is read), then the body is read with a size bound and a
   time bound (408); a client leaving mid-body, or later while its request waits, cancels the
   request (no further work) and is counted as ``499``;
5. one access-log line per request, with status, duration and request id (those of 503s
   rate-limited: ``model_server.access``); ``rakuten_requests_total{status}`` for every
   inference answer.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Any

import orjson
from prometheus_client import REGISTRY, exposition

from model_server import access, metrics
from model_server.admission import (
    TIMEOUT_HEADER,
    Admission,
    Deadline,
    Overloaded,
    Ticket,
    parse_timeout,
)
from model_server.auth import ApiKeys, RateLimiter, credential
from model_server.connections import FastAnswer, Limits
from model_server.preparation import Incoming
from model_server.settings import Settings

logger = logging.getLogger("rakuten.model_server")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
#: A request refused before its body is read keeps its connection if the body is at most this big.
KEEP_ALIVE_REFUSED_BYTES = 1024 * 1024
#: Status recorded for a client that left before its answer (nginx's convention).
CLIENT_CLOSED = 499
SCOPE_INCOMING = "rakuten.incoming"
SCOPE_REQUEST_ID = "rakuten.request_id"


def request_id_from(value: bytes | None) -> str:
    """The client's id if sane, else 32 random hex digits (a uuid4's format at a fifth of its cost)."""
    if value:
        text = value.decode("latin-1")
        if _SANE_ID.match(text):
            return text
    return os.urandom(16).hex()


class ServerState:
    """What probes report: set by the server (drain) and the model (loaded, unloaded)."""

    def __init__(self, ready_check):
        self.ready_check = ready_check  # () -> str | None: why not ready, or None
        self.draining = False

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "the server is shutting down"
        return self.ready_check()


class _ClientLeft(Exception):
    pass


class Gate:
    def __init__(self, app, settings: Settings, state: ServerState, admission: Admission, keys: ApiKeys,
                 limiter: RateLimiter):
        self.app, self.settings, self.state, self.admission = app, settings, state, admission
        self.keys, self.limiter = keys, limiter
        name = settings.model_name
        self.infer_path = f"/v2/models/{name}/infer"
        self.model_ready_path = f"/v2/models/{name}/ready"
        self.probe_paths = frozenset({"/", "/v2/health/live", "/v2/health/ready", self.model_ready_path})
        self.metrics_here = settings.metrics_port == 0
        self._requests: dict[int, Any] = {}  # status -> counter child
        self._name = name

    # -- entry -----------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = _wanted(scope["headers"])
        rid = request_id_from(headers.get(REQUEST_ID_HEADER))
        scope[SCOPE_REQUEST_ID] = rid
        path = scope["path"]
        status = 500
        rid_header = (REQUEST_ID_HEADER, rid.encode())

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                scope["rakuten.started"] = True
                extra = [rid_header]
                if self.state.draining:
                    extra.append((b"connection", b"close"))  # clients reconnect to another replica
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        infer = path == self.infer_path and scope["method"] == "POST"
        try:
            if path in self.probe_paths:
                await self._probe(path, send_with_id)
            elif path == "/metrics" and self.metrics_here:
                await self._metrics(send_with_id)
            elif not await self._allowed(headers, send_with_id):
                pass
            elif infer:
                await self._infer(scope, receive, send_with_id, headers, rid)
            else:
                await self.app(scope, receive, send_with_id)
        except _ClientLeft:
            status = CLIENT_CLOSED
        except Exception:
            if status == 500 and not self._started(scope):
                logger.exception("unhandled error id=%s", rid)
                await _json(send_with_id, 500, {"error": "internal error; see the server log"})
        finally:
            if infer:
                self._count(status)
            access.log_http(scope.get("client"), scope["method"], path, status, started, rid)

    @staticmethod
    def _started(scope) -> bool:
        return scope.get("rakuten.started", False)

    # -- probes and metrics ----------------------------------------------------------------------
    def probe_answer(self, path: str) -> tuple[int, dict]:
        if path == "/":
            return 200, {"status": "alive"}
        if path.endswith("/live"):
            return 200, {"live": True}
        reason = self.state.not_ready_reason()
        body: dict[str, object] = {"ready": reason is None}
        if path == self.model_ready_path:
            body = {"name": self._name, **body}
        if reason is not None:
            body["error"] = reason
        return (200 if reason is None else 503), body

    def connection_limits(self) -> Limits:
        """The HTTP protocol's limits (``--max_connections`` & co.), answering probes and refusals
        through this gate."""
        settings = self.settings
        limits = Limits(settings.max_connections, settings.header_timeout_seconds, settings.max_header_bytes,
                        settings.max_headers)
        limits.probe_paths = frozenset(path.encode() for path in self.probe_paths)
        limits.probe, limits.refuse = self.fast_probe, self.fast_refusal
        limits.refusal_path = self.infer_path.encode()
        return limits

    def fast_probe(self, path: str, headers: list) -> FastAnswer:
        """A probe answered by the HTTP protocol itself (``model_server.connections``)."""
        rid = request_id_from(next((value for key, value in headers if key == REQUEST_ID_HEADER), None))
        status, body = self.probe_answer(path)
        return FastAnswer(status, orjson.dumps(body), rid, self.state.draining)

    def fast_refusal(self, raw_headers: list, client: tuple | None) -> FastAnswer | None:
        """The 503 for an inference request while admission is full, written by the HTTP protocol
        before any ASGI task exists; ``None`` lets the request go the ordinary way (which makes every
        other decision: keys, malformed headers, body size, and admission again if room was made)."""
        if self.keys.enabled:
            return None  # 401 and 429 come before 503
        started = time.perf_counter()
        headers = _wanted(raw_headers)
        try:
            length, _ = self._announced(headers)
        except ValueError:
            return None
        if length is not None and length > self.settings.max_body_bytes:
            return None
        refused = self.admission.refusal(length or 0)
        if refused is None:
            return None
        rid = request_id_from(headers.get(REQUEST_ID_HEADER))
        status, body, close = _busy_answer(refused, length)
        self._count(status)
        access.log_http(client, "POST", self.infer_path, status, started, rid)
        return FastAnswer(status, orjson.dumps(body), rid, self.state.draining or bool(close),
                          ((b"retry-after", str(refused.retry_after).encode()),))

    async def _probe(self, path: str, send) -> None:
        status, body = self.probe_answer(path)
        await _json(send, status, body)

    async def _metrics(self, send) -> None:
        text = await asyncio.get_running_loop().run_in_executor(None, exposition.generate_latest, REGISTRY)
        await _respond(send, 200, text, exposition.CONTENT_TYPE_LATEST.encode())

    # -- authentication, rate limit ---------------------------------------------------------------
    async def _allowed(self, headers: dict, send) -> bool:
        if not self.keys.enabled:
            return True
        presented = credential(_text(headers.get(b"authorization")), _text(headers.get(b"x-api-key")))
        key = self.keys.check(presented)
        if key is None:
            metrics.REJECTED.labels(model_name=self._name, reason="unauthenticated").inc()
            await _json(send, 401, {"error": "unauthorized"}, [(b"www-authenticate", b"Bearer")])
            return False
        if self.limiter.enabled:
            wait = self.limiter.acquire(key)
            if wait:
                metrics.REJECTED.labels(model_name=self._name, reason="rate_limited").inc()
                await _json(send, 429, {"error": f"rate limit of {self.limiter.rate:g} requests/s for this key "
                                                 f"exceeded; retry in {wait} s"},
                            [(b"retry-after", str(wait).encode())])
                return False
        return True

    # -- inference ---------------------------------------------------------------------------------
    def _announced(self, headers: dict) -> tuple[int | None, float]:
        """The body length and deadline (seconds) a request's headers announce; ``ValueError`` if malformed."""
        return (_content_length(headers.get(b"content-length")),
                parse_timeout(_text(headers.get(TIMEOUT_HEADER.encode())), self.settings.request_timeout_seconds))

    async def _infer(self, scope, receive, send, headers: dict, rid: str) -> None:
        settings = self.settings
        try:
            length, seconds = self._announced(headers)
            deadline = Deadline.after(seconds)
        except ValueError as exc:
            return await self._refuse(send, 400, "bad_header", str(exc), close=True)
        if length is not None and length > settings.max_body_bytes:
            return await self._refuse(send, 413, "body_too_large", f"request body of {length} bytes is over "
                                      f"the {settings.max_body_bytes}-byte limit", close=True)
        try:
            ticket = Ticket(self.admission, length or 0, deadline)
        except Overloaded as exc:
            status, body, close = _busy_answer(exc, length)
            return await _json(send, status, body, [(b"retry-after", str(exc.retry_after).encode()), *close])
        try:
            payload = await self._read_body(receive, send, ticket, length)
            if payload is None:
                return
            scope[SCOPE_INCOMING] = Incoming(self._name, deadline, rid, ticket, payload,
                                             _text(headers.get(b"inference-header-content-length")))
            await self._run_watched(scope, receive, send)
        finally:
            ticket.release()

    async def _read_body(self, receive, send, ticket: Ticket, length: int | None) -> bytes | None:
        limit = self.settings.max_body_bytes
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        self.admission.dropped("client_disconnected")
                        raise _ClientLeft
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        await self._refuse(send, 413, "body_too_large",
                                           f"request body is over the {limit}-byte limit", close=True)
                        return None
                    if chunk:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(send, 408, "body_timeout", f"request body not received within "
                               f"{self.settings.body_timeout_seconds:g} s", close=True)
            return None
        if length is None or size > length:
            ticket.add_bytes(size - (length or 0))
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _run_watched(self, scope, receive, send) -> None:
        """Run the app; if the client disconnects meanwhile, cancel it (its queued work is skipped)."""
        task = asyncio.current_task()
        left = asyncio.Event()
        answered = []

        async def send_tracked(message):
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered.append(True)  # uvicorn reports "disconnect" once the response is complete
            await send(message)

        async def no_more_body():
            await left.wait()
            return {"type": "http.disconnect"}

        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, left, answered))
        try:
            await self.app(scope, no_more_body, send_tracked)
        except asyncio.CancelledError:
            if not left.is_set():
                raise
            task.uncancel()
            self.admission.dropped("client_disconnected")
            raise _ClientLeft from None
        finally:
            watcher.cancel()

    async def _refuse(self, send, status: int, reason: str, message: str, close: bool = False) -> None:
        metrics.REJECTED.labels(model_name=self._name, reason=reason).inc()
        await _json(send, status, {"error": message}, [(b"connection", b"close")] if close else ())

    def _count(self, status: int) -> None:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = metrics.REQUESTS.labels(model_name=self._name, status=str(status))
        child.inc()


def _busy_answer(refused: Overloaded, length: int | None) -> tuple[int, dict, list]:
    """503 and its body; the connection is closed (third item) unless the body is small enough to
    skip: cheaper for both ends than reconnecting, while a large or unannounced body is not worth receiving."""
    close = [(b"connection", b"close")] if length is None or length > KEEP_ALIVE_REFUSED_BYTES else []
    return 503, {"error": str(refused)}, close


_WANTED = frozenset({REQUEST_ID_HEADER, b"authorization", b"x-api-key", b"content-length", TIMEOUT_HEADER.encode(),
                     b"inference-header-content-length"})


async def _watch_disconnect(receive, task: asyncio.Task, left: asyncio.Event, answered: list) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not answered:
                left.set()
                if not task.done():
                    task.cancel()
            return


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _content_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError("header content-length must be a non-negative integer")
    return int(value)


def _wanted(raw_headers) -> dict:
    """The request headers the gate reads, by lower-case name."""
    return {key: value for key, value in raw_headers if key in _WANTED}


async def _json(send, status: int, body: dict, headers=()) -> None:
    await _respond(send, status, orjson.dumps(body), b"application/json", headers)


async def _respond(send, status: int, body: bytes, content_type: bytes, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
