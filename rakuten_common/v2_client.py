"""A minimal V2 client for ``rakuten-classifier``: builds requests, sends them, reads answers.

Used by ``python -m model_server.client``, ``make demo``, the chart's smoke test, the rollout's
smoke call, the tests, the Locust scenarios and the benchmarks, so that all speak exactly the
contract of docs/reference/v2-contract.md. Standard library only (the training image has no KServe).

A server with API keys on (``--api_keys``/``--api_keys_file``) wants ``Authorization: Bearer
<key>``. Every client finds its key the same way (``api_key``): ``--api-key``, else
``--api-key-file``, else the environment, ``API_KEY`` then ``API_KEY_FILE`` (a file in the
server's keys-file format, e.g. the chart's mounted Secret: its first key is sent). The key is
never logged.
"""
from __future__ import annotations

import base64
import json
import os
import struct
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME
from rakuten_common.errors import RakutenError
from rakuten_common.options import option

BINARY_HEADER = "Inference-Header-Content-Length"
#: Environment variables a client reads its API key from: the key itself, or a keys file.
API_KEY_ENV, API_KEY_FILE_ENV = "API_KEY", "API_KEY_FILE"


class ApiKeyError(RakutenError, ValueError):
    """An API key file that cannot be read or holds no key."""


@dataclass(frozen=True)
class ApiKeyOptions:
    """The key options of the command-line clients (``python -m model_server.client``, ``.smoke_test``)."""

    api_key: str = option("", metavar="KEY", shown=f"env {API_KEY_ENV}",
                          help="API key sent as Authorization: Bearer, for a server with keys on "
                               "(prefer the environment or a file: flags show in ps)")
    api_key_file: str = option("", metavar="FILE", shown=f"env {API_KEY_FILE_ENV}",
                               help="file whose first non-comment line is the API key (the server's "
                                    "--api_keys_file format, e.g. a mounted Secret)")


def read_keys_file(path: str | Path) -> list[str]:
    """The keys of a keys file: one per line, blank lines and ``#`` comments skipped (the format of
    the server's ``--api_keys_file``, e.g. a mounted Kubernetes Secret)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def api_key(key: str = "", key_file: str = "", environ: Mapping[str, str] = os.environ) -> str | None:
    """The key to send: ``key``, else the first key of ``key_file``, else ``$API_KEY``, else the first
    key of ``$API_KEY_FILE``; ``None`` when none is set (a server without keys). ``ApiKeyError``
    names a file that cannot be read or holds no key (never the key)."""
    key = key.strip() or (environ.get(API_KEY_ENV, "").strip() if not key_file else "")
    if key:
        return key
    path = key_file or environ.get(API_KEY_FILE_ENV, "").strip()
    if not path:
        return None
    try:
        keys = read_keys_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyError(f"API key file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    if not keys:
        raise ApiKeyError(f"API key file {path} holds no key (only blank lines and # comments)")
    return keys[0]


def auth_headers(key: str | None) -> dict[str, str]:
    """The header that carries ``key`` (none without a key)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass
class Product:
    designation: str
    description: str
    image: bytes  # the image file's bytes (JPEG, PNG or WebP)
    productid: int | None = None  # sent (INT64 input ``productid``) when every product of a request has one


def infer_request(products: list[Product], top_k: int = 1, request_id: str | None = None) -> dict:
    """The JSON body of a V2 inference request, images in base64."""
    n = len(products)
    body: dict = {
        "inputs": [
            {"name": "designation", "datatype": "BYTES", "shape": [n], "data": [p.designation for p in products]},
            {"name": "description", "datatype": "BYTES", "shape": [n], "data": [p.description for p in products]},
            {"name": "image", "datatype": "BYTES", "shape": [n],
             "data": [base64.b64encode(p.image).decode("ascii") for p in products]},
        ],
        "parameters": {"top_k": top_k},
    }
    if products and all(p.productid is not None for p in products):
        body["inputs"].append({"name": "productid", "datatype": "INT64", "shape": [n],
                               "data": [p.productid for p in products]})
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
