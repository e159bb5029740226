"""V2 over gRPC: KServe's servicer, with the REST side's rules.

- ``ModelInfer`` reads BYTES from typed ``contents.bytes_contents`` *and* from
  ``raw_input_contents`` (what ``kserve.InferenceGRPCClient`` sends by default, and the only
  way it sends image files); the request never becomes Python lists of numbers;
- the same admission bounds (``UNAVAILABLE`` beyond), deadline (the call's own gRPC deadline,
  capped by ``--request_timeout_seconds``: ``DEADLINE_EXCEEDED``), API keys
  (``UNAUTHENTICATED``; metadata ``authorization: Bearer <key>`` or ``x-api-key``) and rate
  limit (``RESOURCE_EXHAUSTED``) as REST; health RPCs stay open;
- readiness (``ServerReady``, ``ModelReady``) fails while draining or when the model is gone;
- ``RepositoryModelLoad/Unload`` answer ``UNIMPLEMENTED`` unless ``--enable_repository_api``;
- a request id (metadata ``x-request-id``, or generated) is sent back as initial metadata
  and written in the one access line per call and in error lines.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferInput, InferRequest, to_http_parameters

from model_server import access, errors, metrics
from model_server.admission import Deadline, DeadlineExceeded, Ticket
from model_server.auth import credential
from model_server.codec import malformed
from model_server.preparation import Incoming
from model_server.request_gate import request_id_from


def request_from_grpc(request: pb.ModelInferRequest) -> InferRequest:
    """An ``InferRequest`` of a gRPC request: BYTES from typed or raw contents, nothing expanded."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise malformed(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: one per input is needed")
    inputs = []
    for tensor in request.inputs:
        if raw and tensor.HasField("contents"):
            raise malformed(f"input {tensor.name!r} has contents although the request uses raw_input_contents")
        data = list(tensor.contents.bytes_contents) if tensor.datatype == "BYTES" and not raw else None
        inputs.append(InferInput(name=tensor.name, shape=list(tensor.shape), datatype=tensor.datatype, data=data,
                                 parameters=to_http_parameters(tensor.parameters)))
    return InferRequest(model_name=request.model_name, infer_inputs=inputs, request_id=request.id or None,
                        raw_inputs=raw or None, from_grpc=True, parameters=to_http_parameters(request.parameters))


class Servicer(InferenceServicer):
    def __init__(self, server, settings):
        super().__init__(server.dataplane, server.repository_extension)
        self.server, self.settings = server, settings

    # -- health: open, and honest ------------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.server.state.not_ready_reason() is None)

    async def ModelReady(self, request, context):
        ready = request.name == self.settings.model_name and self.server.state.not_ready_reason() is None
        return pb.ModelReadyResponse(ready=ready)

    # -- the rest: authenticated ---------------------------------------------------------------
    async def ServerMetadata(self, request, context):
        return await self._guarded(context, "ServerMetadata", lambda rid: super(Servicer, self).ServerMetadata(
            request, context))

    async def ModelMetadata(self, request, context):
        return await self._guarded(context, "ModelMetadata", lambda rid: super(Servicer, self).ModelMetadata(
            request, context))

    async def RepositoryModelLoad(self, request, context):
        return await self._repository(context, "RepositoryModelLoad", super().RepositoryModelLoad, request)

    async def RepositoryModelUnload(self, request, context):
        return await self._repository(context, "RepositoryModelUnload", super().RepositoryModelUnload, request)

    async def _repository(self, context, method, call, request):
        if self.server.repository_extension is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "the repository API is disabled (--enable_repository_api)")
        return await self._guarded(context, method, lambda rid: call(request, context))

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return await self._guarded(context, "ModelInfer", lambda rid: self._infer(request, context, rid),
                                   count=True)

    async def _infer(self, request: pb.ModelInferRequest, context, rid: str) -> pb.ModelInferResponse:
        settings = self.settings
        remaining = context.time_remaining()
        seconds = settings.request_timeout_seconds if remaining is None else min(remaining,
                                                                                 settings.request_timeout_seconds)
        deadline = Deadline.after(seconds)
        model = self.server.dataplane.get_model_from_registry(request.model_name)
        ticket = Ticket(self.server.admission, request.ByteSize(), deadline)
        try:
            incoming = Incoming(request.model_name, deadline, rid, ticket, request=request_from_grpc(request))
            try:
                async with asyncio.timeout(max(deadline.remaining(), 0)):
                    response, _ = await model(incoming, headers={"x-request-id": rid})
            except TimeoutError:
                raise DeadlineExceeded(f"deadline of {seconds:g} s passed before the answer was ready") from None
            return response.to_grpc()
        finally:
            ticket.release()

    async def _guarded(self, context, method: str, call, count: bool = False):
        """Authentication, rate limit, request id, error mapping and the access line of one call."""
        started = time.perf_counter()
        metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())
                    if isinstance(value, str)}
        rid = request_id_from(metadata.get("x-request-id", "").encode("latin-1", "replace") or None)
        code = grpc.StatusCode.OK
        try:
            await context.send_initial_metadata((("x-request-id", rid),))
            self._authorize(metadata)
            return await call(rid)
        except _Refused as exc:
            code = exc.code
            await context.abort(exc.code, exc.message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            self.server.admission.dropped("client_disconnected")
            raise
        except Exception as exc:
            if isinstance(exc, aio.AbortError):
                raise
            code = errors.grpc_status(exc)
            message = errors.status_and_message(exc)[1]
            if isinstance(exc, DeadlineExceeded):
                self.server.admission.dropped("deadline")
            level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.WARNING
            errors.refusals.log(level, "grpc %s %s id=%s: %s", method, code.name, rid, message[:300],
                                exc_info=exc if level == logging.ERROR else None)
            await context.abort(code, message)
        finally:
            if count:
                metrics.REQUESTS.labels(model_name=self.settings.model_name, status=f"grpc_{code.name}").inc()
            access.log_grpc(context.peer(), method, code.name, started, rid)

    def _authorize(self, metadata: dict[str, str]) -> None:
        keys, limiter = self.server.keys, self.server.limiter
        if not keys.enabled:
            return
        key = keys.check(credential(metadata.get("authorization"), metadata.get("x-api-key")))
        if key is None:
            metrics.REJECTED.labels(model_name=self.settings.model_name, reason="unauthenticated").inc()
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
        if limiter.enabled:
            wait = limiter.acquire(key)
            if wait:
                metrics.REJECTED.labels(model_name=self.settings.model_name, reason="rate_limited").inc()
                raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"rate limit of {limiter.rate:g} requests/s for this key exceeded; retry in {wait} s")


class _Refused(Exception):
    def __init__(self, code, message: str):
        super().__init__(message)
        self.code, self.message = code, message


async def start_grpc_server(server, settings) -> aio.Server:
    grpc_server = aio.server(
        options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                 ("grpc.max_send_message_length", settings.max_body_bytes),
                 ("grpc.max_connection_idle_ms", settings.timeout_keep_alive * 1000)],
        maximum_concurrent_rpcs=settings.max_connections)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(server, settings), grpc_server)
    try:
        grpc_server.add_insecure_port(f"[::]:{settings.grpc_port}")
    except RuntimeError:  # no IPv6 in this network namespace
        grpc_server.add_insecure_port(f"0.0.0.0:{settings.grpc_port}")
    await grpc_server.start()
    return grpc_server

