"""The V2 contract of ``rakuten-classifier``: decode and validate an ``InferRequest``.

Inputs, all ``datatype: BYTES`` with ``shape: [N]`` (``[N, 1]`` is accepted too):
``designation`` (required, UTF-8 text), ``description`` (optional, may be empty) and
``image`` (required; each element a JPEG/PNG/WebP file, base64 in JSON or raw bytes with the
binary tensor extension / gRPC). Request parameter ``top_k``: 1 to the number of classes, default 1.
Every refusal is a ``RequestRejected`` (HTTP 400) whose message names the problem.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, to_http_parameters

from model_server.settings import RequestLimits

REQUIRED_INPUTS = ("designation", "image")
OPTIONAL_INPUTS = ("description",)
INPUT_NAMES = REQUIRED_INPUTS + OPTIONAL_INPUTS


class RequestRejected(InvalidInput):
    """A client error (HTTP 400). ``kind`` is its ``reason`` label in ``rakuten_rejected_requests_total``;
    the message (``InvalidInput.reason``, sent to the client) names the problem."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Products:
    """One request's products, validated but not yet decoded."""

    designations: list[str]
    descriptions: list[str]
    images: list[bytes]
    top_k: int

    def __len__(self) -> int:
        return len(self.designations)


def _top_k(request: InferRequest, num_classes: int) -> int:
    value = to_http_parameters(request.parameters or {}).get("top_k", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= num_classes:
        raise RequestRejected("invalid_parameter",
                              f"parameter top_k must be an integer from 1 to {num_classes}, got {value!r}")
    return value


def _elements(tensor, limits: RequestLimits) -> list:
    """The flat element list of one BYTES input, after checking datatype and shape."""
    name = tensor.name
    if tensor.datatype != "BYTES":
        raise RequestRejected("wrong_datatype", f"input {name!r} must have datatype BYTES, got {tensor.datatype}")
    shape = list(tensor.shape or [])
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise RequestRejected("wrong_shape", f"input {name!r} must have shape [N] (or [N, 1]), got {shape}")
    n = shape[0]
    if n < 1:
        raise RequestRejected("wrong_shape", f"input {name!r} has shape {shape}: at least one product is needed")
    if n > limits.max_items:
        raise RequestRejected("batch_too_large",
                              f"input {name!r} holds {n} products, this server accepts at most {limits.max_items}")
    data = tensor.data
    if data is None:
        raise RequestRejected("missing_data", f"input {name!r} has no data")
    data = list(data)
    if data and isinstance(data[0], list):
        data = [element for row in data for element in (row if isinstance(row, list) else [row])]
    if len(data) != n:
        raise RequestRejected("shape_mismatch",
                              f"input {name!r} declares shape {shape} but holds {len(data)} elements")
    return data


def _text(value, name: str, index: int, limits: RequestLimits) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected("invalid_text", f"{name}[{index}] is not valid UTF-8") from None
    if not isinstance(value, str):
        raise RequestRejected("invalid_text", f"{name}[{index}] must be a string, got {type(value).__name__}")
    if len(value) > limits.max_text_chars:
        raise RequestRejected("text_too_long",
                              f"{name}[{index}] has {len(value)} characters, limit is {limits.max_text_chars}")
    return value


def _image(value, index: int, limits: RequestLimits) -> bytes:
    """Raw bytes pass through (binary extension, gRPC); strings are base64 of the file."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        if len(value) * 3 // 4 > limits.image.max_bytes + 3:
            raise RequestRejected("image_too_large",
                                  f"image[{index}] is over the {limits.image.max_bytes}-byte limit")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestRejected("invalid_base64", f"image[{index}] is not valid base64") from None
    else:
        raise RequestRejected("invalid_image", f"image[{index}] must be base64 text or bytes, got {type(value).__name__}")
    if not data:
        raise RequestRejected("invalid_image", f"image[{index}] is empty")
    if len(data) > limits.image.max_bytes:
        raise RequestRejected("image_too_large",
                              f"image[{index}] is {len(data)} bytes, limit is {limits.image.max_bytes}")
    return data


def decode_request(request: InferRequest, limits: RequestLimits, num_classes: int) -> Products:
    """Validate names, datatypes, shapes and elements; raise ``RequestRejected`` on the first fault.

    ``num_classes`` (from the loaded label map) bounds ``top_k``."""
    if not isinstance(request, InferRequest):
        raise RequestRejected("wrong_protocol", "this model speaks the V2 protocol: POST /v2/models/<name>/infer")
    tensors = {}
    for tensor in request.inputs or []:
        if tensor.name in tensors:
            raise RequestRejected("duplicate_input", f"input {tensor.name!r} appears more than once")
        if tensor.name not in INPUT_NAMES:
            raise RequestRejected("unknown_input", f"unknown input {tensor.name!r}: inputs are {list(INPUT_NAMES)}")
        tensors[tensor.name] = tensor
    missing = [name for name in REQUIRED_INPUTS if name not in tensors]
    if missing:
        raise RequestRejected("missing_input", f"missing required input(s) {missing}")
    top_k = _top_k(request, num_classes)
    elements = {name: _elements(tensor, limits) for name, tensor in tensors.items()}
    sizes = {name: len(values) for name, values in elements.items()}
    if len(set(sizes.values())) > 1:
        raise RequestRejected("batch_mismatch", f"inputs hold different numbers of products: {sizes}")
    n = sizes["designation"]
    descriptions = elements.get("description", [""] * n)
    return Products(
        designations=[_text(v, "designation", i, limits) for i, v in enumerate(elements["designation"])],
        descriptions=[_text(v, "description", i, limits) for i, v in enumerate(descriptions)],
        images=[_image(v, i, limits) for i, v in enumerate(elements["image"])],
        top_k=top_k,
    )
