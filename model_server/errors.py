"""Errors to answers, and to log lines: one rate-limited line per refused request, never an echo.

KServe's handlers log a full traceback (3.3 KB) for every 400; here a client error is one
WARNING line with the status, reason and request id, at most ``LINES_PER_SECOND`` a second
(a summary line says how many were left out), and its answer is ``{"error": "..."}`` without
the client's input. Unexpected errors (500) keep their traceback, also rate-limited.
gRPC gets the same mapping to status codes (``grpc_status``).
"""
from __future__ import annotations

import logging
from http import HTTPStatus

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from starlette.exceptions import HTTPException
from starlette.responses import Response

from model_server.admission import DeadlineExceeded, Overloaded
from rakuten_common.logs import RateLimitedLog

logger = logging.getLogger("rakuten.model_server")

LINES_PER_SECOND = 10
refusals = RateLimitedLog(logger, LINES_PER_SECOND)


def status_and_message(exc: BaseException) -> tuple[int, str, dict[str, str]]:
    """HTTP status, client message and extra headers of an exception."""
    if isinstance(exc, InvalidInput):
        return getattr(exc, "status", 400), str(exc), {}
    if isinstance(exc, Overloaded):
        return 503, str(exc), {"retry-after": str(exc.retry_after)}
    if isinstance(exc, DeadlineExceeded):
        return 504, str(exc), {}
    if isinstance(exc, ModelNotFound):
        return 404, str(exc), {}
    if isinstance(exc, ModelNotReady):
        return 503, str(exc), {"retry-after": "1"}
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail), dict(exc.headers or {})
    if isinstance(exc, RequestValidationError):
        where = ", ".join(".".join(map(str, e.get("loc", ()))) + ": " + str(e.get("msg", "")) for e in exc.errors()[:3])
        return 422, f"malformed request: {where}"[:500], {}
    if isinstance(exc, NotImplementedError):
        return 501, str(exc) or "not implemented", {}
    return 500, f"internal error ({type(exc).__name__}); see the server log", {}


async def handle(request: Request, exc: Exception) -> Response:
    status, message, headers = status_and_message(exc)
    rid = request.scope.get("rakuten.request_id", "-")
    if status >= 500 and status not in (503, 504):
        refusals.log(logging.ERROR, "%d %s %s id=%s: %s", status, request.method, request.url.path, rid,
                     exc, exc_info=exc)
    else:
        kind = getattr(exc, "kind", None) or HTTPStatus(status).phrase.lower().replace(" ", "_")
        refusals.log(logging.WARNING, "%d %s %s id=%s %s: %s", status, request.method, request.url.path, rid,
                     kind, message[:300])
    return Response(orjson.dumps({"error": message}), status_code=status, headers=headers,
                    media_type="application/json")


def install(app: FastAPI) -> None:
    for kind in (InvalidInput, Overloaded, DeadlineExceeded, ModelNotFound, ModelNotReady, HTTPException,
                 RequestValidationError, NotImplementedError, Exception):
        app.add_exception_handler(kind, handle)


def grpc_status(exc: BaseException):
    """The gRPC status code of an exception (``grpc.StatusCode``)."""
    import grpc

    status = status_and_message(exc)[0]
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
            401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
            429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
            503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
            }.get(status, grpc.StatusCode.INTERNAL)
