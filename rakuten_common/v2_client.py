"""A minimal V2 client for ``rakuten-classifier``: builds requests, sends them, reads answers.

Used by ``python -m model_server.client``, ``make demo``, the chart's smoke test, the rollout's
smoke call, the tests, the Locust scenarios and the benchmarks, so that all speak exactly the
contract of docs/reference/v2-contract.md. Standard library only (the training image has no KServe).
"""
from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass

from rakuten_common.bundle import MODEL_NAME

BINARY_HEADER = "Inference-Header-Content-Length"


@dataclass
class Product:
    designation: str
    description: str
    image: bytes  # the image file's bytes (JPEG, PNG or WebP)


def infer_request(products: list[Product], top_k: int = 1, request_id: str | None = None) -> dict:
    """The JSON body of a V2 inference request, images in base64."""
    n = len(products)
    body = {
        "inputs": [
            {"name": "designation", "datatype": "BYTES", "shape": [n], "data": [p.designation for p in products]},
            {"name": "description", "datatype": "BYTES", "shape": [n], "data": [p.description for p in products]},
            {"name": "image", "datatype": "BYTES", "shape": [n],
             "data": [base64.b64encode(p.image).decode("ascii") for p in products]},
        ],
        "parameters": {"top_k": top_k},
    }
    if request_id:
        body["id"] = request_id
    return body


def binary_infer_request(products: list[Product], top_k: int = 1) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a request using the binary tensor data extension for images."""
    body = infer_request(products, top_k)
    raw = b"".join(struct.pack("<I", len(p.image)) + p.image for p in products)
    image = body["inputs"][2]
    del image["data"]
    image["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(body).encode()
    return header + raw, {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))}


def parse_response(answer: dict) -> list[list[tuple[int, float]]]:
    """``[[(prdtypecode, probability), ...top_k], ...N]`` from a V2 response body."""
    outputs = {o["name"]: o for o in answer["outputs"]}
    codes, probs = outputs["prdtypecode"], outputs["probability"]
    n, k = codes["shape"]
    return [[(int(codes["data"][i * k + j]), float(probs["data"][i * k + j])) for j in range(k)] for i in range(n)]


def infer_url(base_url: str, model_name: str = MODEL_NAME) -> str:
    return f"{base_url.rstrip('/')}/v2/models/{model_name}/infer"


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> tuple[int, dict]:
    """POST and return ``(status, json_body)`` for any status code."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
