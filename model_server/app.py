"""The REST app: KServe's V2 routes and data plane, composed here instead of by ``ModelServer``.

What differs from KServe 0.21's app:

- the inference route takes the body the gate read and bounded, hands it to the model as an
  ``Incoming`` and parses it on the preprocessing threads (no pydantic, nothing CPU-bound on
  the event loop), under the request's deadline (504 past it, queued work dropped);
- the repository API (``/v2/repository/models/<name>/load|unload``) exists only with
  ``--enable_repository_api``: otherwise anyone could unload the model;
- no V1 routes (this model speaks V2 only), no ``/docs``, no ``/openapi.json``;
- health probes and ``/metrics`` are answered by the gate (``model_server.request_gate``);
- errors are ``model_server.errors``' one-line answers and logs.
"""
from __future__ import annotations

import asyncio

import orjson
from fastapi import FastAPI
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse
from kserve.protocol.rest.v2_datamodels import ListModelsResponse, ModelMetadataResponse
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from starlette.requests import Request
from starlette.responses import Response

from model_server import errors
from model_server.admission import Admission, DeadlineExceeded
from model_server.preparation import Incoming
from model_server.request_gate import SCOPE_INCOMING

BINARY_HEADER = "inference-header-content-length"


class InferEndpoint:
    """``POST /v2/models/<name>/infer``: the gate's ``Incoming`` through the model, under its deadline."""

    def __init__(self, dataplane: DataPlane, admission: Admission):
        self.dataplane, self.admission = dataplane, admission

    async def infer(self, request: Request) -> Response:
        name = request.path_params["model_name"]
        model = self.dataplane.get_model_from_registry(name)  # ModelNotFound: 404
        if not model.ready:
            raise ModelNotReady(name)
        incoming: Incoming = request.scope[SCOPE_INCOMING]
        remaining = incoming.deadline.remaining()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                response, _ = await model(incoming, headers={"x-request-id": incoming.request_id})
        except TimeoutError:
            self.admission.dropped("deadline")
            raise DeadlineExceeded(f"deadline of {incoming.deadline.seconds:g} s passed before the answer "
                                   "was ready; the request's queued work was dropped") from None
        except DeadlineExceeded:
            self.admission.dropped("deadline")
            raise
        return encode_response(response)


def encode_response(response: InferResponse) -> Response:
    body, json_size = response.to_rest()
    if isinstance(body, bytes):  # binary outputs requested
        return Response(body, media_type="application/octet-stream", headers={BINARY_HEADER: str(json_size)})
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def build_app(dataplane: DataPlane, admission: Admission, repository_extension=None,
              latency_logging: bool = False) -> FastAPI:
    """The FastAPI app; ``repository_extension`` set mounts the repository API."""
    app = FastAPI(title="rakuten-classifier V2 predictor", docs_url=None, redoc_url=None, openapi_url=None)
    v2 = V2Endpoints(dataplane, repository_extension)

    async def server_metadata() -> dict:
        return {"name": "rakuten-classifier predictor (KServe)", "version": dataplane.metadata()["version"],
                "extensions": ["binary_tensor_data"] + (["model_repository"] if repository_extension else [])}

    app.add_api_route("/v2", server_metadata, methods=["GET"])
    app.add_api_route("/v2/models", v2.models, response_model=ListModelsResponse, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}", v2.model_metadata, response_model=ModelMetadataResponse,
                      methods=["GET"])
    app.router.add_route("/v2/models/{model_name}/infer", InferEndpoint(dataplane, admission).infer, methods=["POST"])
    if repository_extension is not None:
        app.add_api_route("/v2/repository/models/{model_name}/load", v2.load, methods=["POST"])
        app.add_api_route("/v2/repository/models/{model_name}/unload", v2.unload, methods=["POST"])
    errors.install(app)
    if latency_logging:
        from kserve.protocol.rest.server import PrintTimings
        from timing_asgi import TimingMiddleware
        from timing_asgi.integrations import StarletteScopeToName

        app.add_middleware(TimingMiddleware, client=PrintTimings(),
                           metric_namer=StarletteScopeToName(prefix="kserve.io", starlette_app=app))
    return app
