"""The V2 contract of ``rakuten-classifier``: parse and validate a request, whatever its transport.

Inputs, all with ``shape: [N]`` (``[N, 1]`` is accepted too), datatype ``BYTES`` unless said:
``designation`` (required, UTF-8 text), ``description`` (optional, may be empty),
``image`` (required; each element a JPEG/PNG/WebP file, base64 in JSON or raw bytes with the
binary tensor extension / gRPC, typed ``bytes_contents`` or ``raw_input_contents``) and
``productid`` (optional, ``INT64``: the shop's product ids, kept in inference captures;
little-endian 8-byte integers with the binary extension / gRPC raw contents).
Request parameter ``top_k``: 1 to the number of classes, default 1.

Everything here treats its input as hostile: a JSON body is parsed with ``orjson`` (no
pydantic on the event loop) and every field is type-checked before use, so any malformed
request is a ``RequestRejected`` (HTTP 422 for a body that is not a V2 request at all, 400
otherwise) whose message names the problem and never echoes the input back.
"""
from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import (
    InferInput,
    InferRequest,
    RequestedOutput,
    to_http_parameters,
)

from model_server.settings import RequestLimits

REQUIRED_INPUTS = ("designation", "image")
OPTIONAL_INPUTS = ("description", "productid")
INPUT_NAMES = REQUIRED_INPUTS + OPTIONAL_INPUTS


class RequestRejected(InvalidInput):
    """A client error. ``kind`` is its ``reason`` label in ``rakuten_rejected_requests_total``,
    ``status`` its HTTP code; the message (``InvalidInput.reason``, sent to the client) names
    the problem."""

    def __init__(self, kind: str, message: str, status: int = 400):
        super().__init__(message)
        self.kind = kind
        self.status = status


def malformed(message: str) -> RequestRejected:
    """A body that is not a V2 inference request (HTTP 422, like FastAPI's schema errors)."""
    return RequestRejected("malformed_request", message, status=422)


@dataclass
class Products:
    """One request's products, validated but not yet decoded."""

    designations: list[str]
    descriptions: list[str]
    images: list[bytes]
    top_k: int
    productids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.designations)


# -- the JSON body (REST) -------------------------------------------------------------------------
def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise malformed(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _optional_object(value, where: str) -> dict | None:
    return None if value is None else _object(value, where)


def _string(value, where: str) -> str:
    if not isinstance(value, str):
        raise malformed(f"{where} must be a string, got {type(value).__name__}")
    return value


def parse_json(body: bytes | memoryview) -> dict:
    """``orjson.loads`` of a request body, refusing what is not a JSON object."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise malformed(f"the request body is not valid JSON: {exc}") from None
    return _object(document, "the request body")


def request_from_json(document: dict, model_name: str, data_required: bool = True) -> InferRequest:
    """An ``InferRequest`` from a parsed V2 JSON document, every field type-checked.

    ``data_required=False`` (binary extension) lets an input carry ``binary_data_size`` instead.
    """
    inputs_json = document.get("inputs")
    if not isinstance(inputs_json, list):
        raise malformed('the request needs an "inputs" list')
    inputs = []
    for index, spec in enumerate(inputs_json):
        where = f"inputs[{index}]"
        spec = _object(spec, where)
        for key in ("name", "shape", "datatype"):
            if key not in spec:
                raise malformed(f"{where} has no {key!r}")
        name = _string(spec["name"], f"{where}.name")
        shape = spec["shape"]
        if not isinstance(shape, list):
            raise malformed(f"{where}.shape must be a list of integers, got {type(shape).__name__}")
        parameters = _optional_object(spec.get("parameters"), f"{where}.parameters")
        tensor = InferInput(name=name, shape=shape, datatype=_string(spec["datatype"], f"{where}.datatype"),
                            data=spec.get("data"), parameters=dict(parameters) if parameters else {})
        if tensor.data is None and (data_required or "binary_data_size" not in tensor.parameters):
            raise malformed(f"input {name!r} has no data")
        inputs.append(tensor)
    outputs = None
    if document.get("outputs") is not None:
        if not isinstance(document["outputs"], list):
            raise malformed('"outputs" must be a list')
        outputs = []
        for index, spec in enumerate(document["outputs"]):
            spec = _object(spec, f"outputs[{index}]")
            outputs.append(RequestedOutput(name=_string(spec.get("name"), f"outputs[{index}].name"),
                                           parameters=_optional_object(spec.get("parameters"),
                                                                       f"outputs[{index}].parameters")))
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestRejected("invalid_id", f'"id" must be a string, got {type(request_id).__name__}')
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=request_id,
                        parameters=_optional_object(document.get("parameters"), '"parameters"'),
                        request_outputs=outputs)


# -- one request's products ------------------------------------------------------------------------
def _top_k(request: InferRequest, num_classes: int) -> int:
    value = to_http_parameters(request.parameters or {}).get("top_k", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= num_classes:
        raise RequestRejected("invalid_parameter",
                              f"parameter top_k must be an integer from 1 to {num_classes}, got {_short(value)}")
    return value


def _short(value, limit: int = 40) -> str:
    """``repr`` of a client's value, cut: error messages never echo a whole input back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def split_bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """``[len:u32 LE][bytes]...`` -> list of bytes, refusing truncated framing."""
    elements, offset, size = [], 0, len(raw)
    while offset < size:
        if offset + 4 > size:
            raise RequestRejected("malformed_binary", f"binary data of input {name!r} ends inside an element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > size:
            raise RequestRejected("malformed_binary", f"binary data of input {name!r} announces a {length}-byte element "
                           f"but only {size - offset} bytes remain")
        elements.append(bytes(raw[offset:offset + length]))
        offset += length
    return elements


def _batch_size(tensor: InferInput, datatype: str, limits: RequestLimits) -> int:
    """N of an input of shape ``[N]`` or ``[N, 1]``, after checking its datatype and shape."""
    name = tensor.name
    if tensor.datatype != datatype:
        raise RequestRejected("wrong_datatype",
                              f"input {name!r} must have datatype {datatype}, got {_short(tensor.datatype)}")
    shape = tensor.shape
    if not isinstance(shape, list) or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise RequestRejected("wrong_shape", f"input {name!r} must have shape [N] (or [N, 1]), got {_short(shape)}")
    n = shape[0]
    if n < 1:
        raise RequestRejected("wrong_shape", f"input {name!r} has shape {shape}: at least one product is needed")
    if n > limits.max_items:
        raise RequestRejected("batch_too_large",
                              f"input {name!r} holds {n} products, this server accepts at most {limits.max_items}")
    return n


def _flat(data, name: str) -> list:
    if data is None:
        raise RequestRejected("missing_data", f"input {name!r} has no data")
    if not isinstance(data, (list, tuple)):
        raise RequestRejected("wrong_shape", f"input {name!r}: data must be a list, got {type(data).__name__}")
    if data and isinstance(data[0], list):
        data = [element for row in data for element in (row if isinstance(row, list) else [row])]
    return list(data)


def _elements(tensor: InferInput, limits: RequestLimits) -> list:
    """The flat element list of one BYTES input, after checking datatype and shape."""
    name, shape = tensor.name, tensor.shape
    n = _batch_size(tensor, "BYTES", limits)
    raw = getattr(tensor, "_raw_data", None)
    data = _flat(split_bytes_elements(raw, name) if raw is not None else tensor.data, name)
    if len(data) != n:
        raise RequestRejected("shape_mismatch",
                              f"input {name!r} declares shape {shape} but holds {len(data)} elements")
    return data


_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _int64_elements(tensor: InferInput, limits: RequestLimits) -> list[int]:
    """The integers of one INT64 input (JSON numbers, or little-endian 8-byte raw data)."""
    name, shape = tensor.name, tensor.shape
    n = _batch_size(tensor, "INT64", limits)
    raw = getattr(tensor, "_raw_data", None)
    if raw is not None:
        if len(raw) != 8 * n:
            raise RequestRejected("shape_mismatch", f"input {name!r} declares shape {shape} ({8 * n} bytes of "
                                                    f"INT64) but its binary data has {len(raw)} bytes")
        return [int(v) for v in np.frombuffer(raw, dtype="<i8")]
    data = _flat(tensor.data, name)
    if len(data) != n:
        raise RequestRejected("shape_mismatch",
                              f"input {name!r} declares shape {shape} but holds {len(data)} elements")
    for index, value in enumerate(data):
        if isinstance(value, bool) or not isinstance(value, int) or not _INT64_MIN <= value <= _INT64_MAX:
            raise RequestRejected("invalid_productid",
                                  f"{name}[{index}] must be a 64-bit integer, got {_short(value)}")
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
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestRejected("invalid_text", f"{name}[{index}] holds a lone surrogate (not valid Unicode)") from None
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


def check_request_id(request_id, limits: RequestLimits) -> None:
    """A request id is echoed in the answer: bounded, and valid Unicode."""
    if request_id is None:
        return
    if not isinstance(request_id, str):
        raise RequestRejected("invalid_id", f'"id" must be a string, got {type(request_id).__name__}')
    if len(request_id) > limits.max_id_chars:
        raise RequestRejected("invalid_id", f'"id" has {len(request_id)} characters, limit is {limits.max_id_chars}')
    try:
        request_id.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestRejected("invalid_id", '"id" holds a lone surrogate (not valid Unicode)') from None


def decode_request(request: InferRequest, limits: RequestLimits, num_classes: int) -> Products:
    """Validate names, datatypes, shapes and elements; raise ``RequestRejected`` on the first fault.

    ``num_classes`` (from the loaded label map) bounds ``top_k``."""
    if not isinstance(request, InferRequest):
        raise RequestRejected("wrong_protocol", "this model speaks the V2 protocol: POST /v2/models/<name>/infer")
    check_request_id(request.id, limits)
    tensors = {}
    for tensor in request.inputs or []:
        if tensor.name in tensors:
            raise RequestRejected("duplicate_input", f"input {_short(tensor.name)} appears more than once")
        if tensor.name not in INPUT_NAMES:
            raise RequestRejected("unknown_input", f"unknown input {_short(tensor.name)}: inputs are {list(INPUT_NAMES)}")
        tensors[tensor.name] = tensor
    missing = [name for name in REQUIRED_INPUTS if name not in tensors]
    if missing:
        raise RequestRejected("missing_input", f"missing required input(s) {missing}")
    top_k = _top_k(request, num_classes)
    elements = {name: (_int64_elements if name == "productid" else _elements)(tensor, limits)
                for name, tensor in tensors.items()}
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
        productids=elements.get("productid"),
    )
