"""Our additions to KServe's FastAPI app, installed before ``ModelServer.start()``."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError

from model_server import binary, metrics


async def count_malformed_request(request: Request, exc: RequestValidationError):
    """FastAPI refuses malformed JSON (422) before the model sees it: count it, then answer as usual."""
    model_name = request.path_params.get("model_name")
    if model_name:
        metrics.REJECTED.labels(model_name=model_name, reason="malformed_request").inc()
    return await request_validation_exception_handler(request, exc)


def extend(app: FastAPI, dataplane) -> None:
    binary.install(app, dataplane)
    app.add_exception_handler(RequestValidationError, count_malformed_request)
