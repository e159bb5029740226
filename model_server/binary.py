"""KServe's binary tensor data extension, for raw image bytes without base64.

A request body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by
each binary input's bytes (input parameter ``binary_data_size``); a BYTES element is a
4-byte little-endian length followed by its bytes. KServe 0.21 decodes such BYTES as UTF-8
text, which fails (HTTP 500) for image files, and raises on malformed framing; this module
parses the framing itself, keeps image elements as ``bytes`` and turns every framing fault
into a 400. Everything else is delegated to KServe's own V2 endpoint.
"""
from __future__ import annotations

import struct
from typing import Optional, Union

import numpy as np
import orjson
from fastapi import FastAPI
from fastapi.requests import Request
from fastapi.responses import Response
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput, to_np_dtype
from kserve.protocol.rest.v2_datamodels import InferenceRequest, InferenceResponse
from kserve.protocol.rest.v2_endpoints import V2Endpoints

HEADER = "inference-header-content-length"


def split_bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """``[len:u32 LE][bytes]...`` -> list of bytes, refusing truncated framing."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"binary data of input {name!r} ends inside an element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"binary data of input {name!r} announces a {length}-byte element "
                               f"but only {len(raw) - offset} bytes remain")
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def decode_binary_request(body: bytes, json_length: str, model_name: str) -> InferRequest:
    """Parse a binary-extension body into an ``InferRequest`` whose BYTES data are ``bytes``."""
    try:
        header_size = int(json_length)
    except ValueError:
        raise InvalidInput(f"header {HEADER} must be an integer, got {json_length!r}") from None
    if not 0 < header_size <= len(body):
        raise InvalidInput(f"header {HEADER} is {header_size} but the body has {len(body)} bytes")
    try:
        header = orjson.loads(body[:header_size])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the JSON part of the request is malformed: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput('the JSON part of the request must be an object with an "inputs" list')
    offset, inputs = header_size, []
    for spec in header["inputs"]:
        if not isinstance(spec, dict) or not all(k in spec for k in ("name", "shape", "datatype")):
            raise InvalidInput("every input needs name, shape and datatype")
        name, parameters = spec["name"], dict(spec.get("parameters") or {})
        tensor = InferInput(name=name, shape=spec["shape"], datatype=str(spec["datatype"]), parameters=parameters)
        size = parameters.pop("binary_data_size", None)
        if size is None:
            if "data" not in spec:
                raise InvalidInput(f"input {name!r} has neither data nor binary_data_size")
            tensor.data = spec["data"]
        else:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InvalidInput(f"input {name!r} announces binary_data_size {size} but only "
                                   f"{len(body) - offset} bytes remain")
            raw = body[offset:offset + size]
            offset += size
            if tensor.datatype == "BYTES":
                tensor.data = split_bytes_elements(raw, name)
            else:
                dtype = to_np_dtype(tensor.datatype)
                if dtype is None or size % np.dtype(dtype).itemsize:
                    raise InvalidInput(f"input {name!r}: {size} bytes are not a whole number of {tensor.datatype}")
                tensor.data = np.frombuffer(raw, dtype=dtype).tolist()
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} bytes after the last binary input are not claimed by any input")
    outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in header.get("outputs") or []
               if isinstance(o, dict) and "name" in o]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=header.get("id"),
                        parameters=header.get("parameters"), request_outputs=outputs or None)


class BinaryAwareV2Endpoints(V2Endpoints):
    """KServe's V2 endpoints, with binary-extension bodies parsed by ``decode_binary_request``."""

    async def infer(self, raw_request: Request, raw_response: Response, model_name: str,
                    request_body: Union[InferenceRequest, bytes], model_version: Optional[str] = None,
                    ) -> Union[InferenceResponse, Response]:
        json_length = raw_request.headers.get(HEADER)
        if isinstance(request_body, bytes) and json_length is not None:
            request_body = decode_binary_request(request_body, json_length, model_name)
        return await super().infer(raw_request, raw_response, model_name, request_body, model_version)


def install(app: FastAPI, dataplane) -> None:
    """Route ``POST /v2/models/{name}/infer`` through ``BinaryAwareV2Endpoints``.

    Must run before ``ModelServer.start()``: routes match in registration order, so this one
    takes precedence over the identical route KServe registers at start.
    """
    endpoints = BinaryAwareV2Endpoints(dataplane)
    app.add_api_route("/v2/models/{model_name}/infer", endpoints.infer, response_model=None, methods=["POST"])
