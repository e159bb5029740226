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


class CountInferRequests:
    """ASGI middleware: ``rakuten_requests_total{status}`` for every answer to our infer route,
    including those FastAPI or KServe give before the model runs (422, 400, 503, 500)."""

    def __init__(self, app, model_name: str):
        self.app = app
        self.model_name = model_name
        self.path = f"/v2/models/{model_name}/infer"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        status = 500

        async def record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            metrics.REQUESTS.labels(model_name=self.model_name, status=str(status)).inc()


def extend(app: FastAPI, dataplane, model_name: str) -> None:
    binary.install(app, dataplane)
    app.add_exception_handler(RequestValidationError, count_malformed_request)
    app.add_middleware(CountInferRequests, model_name=model_name)
