"""KServe's binary tensor data extension, for raw image bytes without base64.

A request body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by
each binary input's bytes (input parameter ``binary_data_size``); a BYTES element is a
4-byte little-endian length followed by its bytes. KServe 0.21 decodes such BYTES as UTF-8
text, which fails (HTTP 500) for image files, raises on malformed framing and turns numeric
tensors into Python lists (a 100 MB FP32 tensor grew the server by 1.2 GB); this module
parses the framing itself, keeps image elements as ``bytes``, never expands a numeric tensor
(this model takes none: the codec refuses it by datatype) and turns every fault into a 4xx.
"""
from __future__ import annotations

from kserve.protocol.infer_type import InferRequest

from model_server.codec import RequestRejected, malformed, parse_json, request_from_json

HEADER = "inference-header-content-length"


def _framing(message: str) -> RequestRejected:
    return RequestRejected("malformed_binary", message)


def decode_binary_request(body: bytes, json_length: str, model_name: str) -> InferRequest:
    """Parse a binary-extension body into an ``InferRequest`` whose BYTES data are ``bytes``."""
    try:
        header_size = int(json_length)
    except ValueError:
        raise _framing(f"header {HEADER} must be an integer, got {json_length[:40]!r}") from None
    if not 0 < header_size <= len(body):
        raise _framing(f"header {HEADER} is {header_size} but the body has {len(body)} bytes")
    view = memoryview(body)
    request = request_from_json(parse_json(view[:header_size]), model_name, data_required=False)
    offset = header_size
    for tensor in request.inputs:
        size = tensor.parameters.pop("binary_data_size", None)
        if size is None:
            continue
        if tensor.data is not None:
            raise malformed(f"input {tensor.name!r} has both data and binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise _framing(f"input {tensor.name!r} announces binary_data_size {str(size)[:40]} but only "
                           f"{len(body) - offset} bytes remain")
        tensor._raw_data = view[offset:offset + size]  # framing split by the codec, BYTES only
        offset += size
    if offset != len(body):
        raise _framing(f"{len(body) - offset} bytes after the last binary input are not claimed by any input")
    return request
