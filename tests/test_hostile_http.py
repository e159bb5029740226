"""Hostile input over real HTTP: a table of malformed requests, each a 4xx naming the problem
(never an echo of the input), the server alive and answering correctly after every one of them;
then the HTTP layer's own limits (header/body size, slow headers, slow bodies, connection flood).
All against a real ``python -m model_server`` process with small limits."""
from __future__ import annotations

import base64
import io
import json
import re
import socket
import struct
import time
import urllib.request

import pytest
from PIL import Image

from rakuten_common.processes import wait_until
from rakuten_common.v2_client import (
    Product,
    binary_infer_request,
    infer_request,
    infer_url,
    parse_response,
    post,
)
from tests.support.servers import start_model_server

pytestmark = pytest.mark.e2e
JSON = {"Content-Type": "application/json"}
LIMITS = ["--max_request_items=8", "--max_text_chars=5000", "--max_image_bytes=2000000", "--max_body_bytes=4000000",
          "--max_header_bytes=8192", "--max_headers=50", "--header_timeout_seconds=2", "--body_timeout_seconds=2",
          "--max_connections=64", "--max_id_chars=64", "--max_request_pixels=20000000", "--drain_seconds=0"]


@pytest.fixture(scope="module")
def hostile_url(published, s3, artifacts_dir, tmp_path_factory):
    server, url = start_model_server(published.uri, artifacts_dir / "model_server_hostile.log",
                                     env={**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))},
                                     extra_args=LIMITS)
    server.url = url
    yield server
    server.stop()


def image(fmt="JPEG", size=(500, 500), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 120 if mode != "RGB" else (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


PRODUCT = Product("Piscine tubulaire ronde", "<p>Filtration</p>", image())


def valid(n=1) -> dict:
    return infer_request([PRODUCT] * n, top_k=3)


def changed(target: str, n: int = 1, **changes) -> dict:
    body = valid(n)
    for tensor in body["inputs"]:
        if tensor["name"] == target:
            tensor.update(changes)
    return body


def without(body: dict, *keys: str, where: int | None = None) -> dict:
    body = json.loads(json.dumps(body))
    target = body if where is None else body["inputs"][where]
    for key in keys:
        target.pop(key, None)
    return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def binary(mutate=None, tail: bytes | None = None, extra: bytes = b"") -> tuple[bytes, dict]:
    """A binary-extension request, its JSON header changed by ``mutate``, its binary part replaced by
    ``tail`` or followed by ``extra``."""
    body, headers = binary_infer_request([PRODUCT])
    size = int(headers["Inference-Header-Content-Length"])
    header, raw = json.loads(body[:size]), body[size:]
    if mutate:
        mutate(header)
    encoded = json.dumps(header).encode()
    return encoded + (raw if tail is None else tail) + extra, {**headers, "Inference-Header-Content-Length": str(len(encoded))}


def _set(path, value):
    def mutate(header):
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


FLOATS = struct.pack("<100000f", *([0.5] * 100000))

# name: (body: dict | bytes | (bytes, headers), expected status, regex the error must match or None)
CASES = {
    # not a V2 request at all: 422
    "truncated_json": (b'{"inputs": [', 422, r"not valid JSON"),
    "empty_body": (b"", 422, r"not valid JSON"),
    "json_array": (b"[]", 422, r"JSON object"),
    "json_string": (b'"inputs"', 422, r"JSON object"),
    "json_number": (b"42", 422, r"JSON object"),
    "no_inputs": (b"{}", 422, r'"inputs" list'),
    "inputs_string": ({"inputs": "designation"}, 422, r'"inputs" list'),
    "inputs_object": ({"inputs": {}}, 422, r'"inputs" list'),
    "input_not_object": ({"inputs": [1]}, 422, r"inputs\[0\] must be a JSON object"),
    "input_without_name": (without(valid(), "name", where=0), 422, r"has no 'name'"),
    "input_without_shape": (without(valid(), "shape", where=0), 422, r"has no 'shape'"),
    "input_without_datatype": (without(valid(), "datatype", where=0), 422, r"has no 'datatype'"),
    "name_not_string": (changed("image", name=7), 422, r"name must be a string"),
    "shape_int": (changed("image", shape=1), 422, r"shape must be a list"),
    "shape_string": (changed("image", shape="1"), 422, r"shape must be a list"),
    "datatype_not_string": (changed("image", datatype=["BYTES"]), 422, r"datatype must be a string"),
    "data_missing": (without(valid(), "data", where=2), 422, r"has no data"),
    "input_parameters_list": (changed("image", parameters=[1, 2]), 422, r"parameters must be a JSON object"),
    "request_parameters_list": ({**valid(), "parameters": [3]}, 422, r'"parameters" must be a JSON object'),
    "outputs_not_list": ({**valid(), "outputs": "prdtypecode"}, 422, r'"outputs" must be a list'),
    "output_without_name": ({**valid(), "outputs": [{}]}, 422, r"outputs\[0\]\.name must be a string"),
    "not_utf8": (b'{"inputs": ["\xff\xfe"]}', 422, r"not valid JSON"),
    "lone_surrogate_id": (b'{"id": "\\ud800", ' + json.dumps(valid())[1:].encode(), 422, r"not valid JSON"),
    "nan_literal": (b'{"inputs": [], "parameters": {"top_k": NaN}}', 422, r"not valid JSON"),
    "three_megabytes_unterminated": (b'{"inputs": "' + b"x" * 3_000_000, 422, r"not valid JSON"),
    "deep_nesting": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, r"not valid JSON"),
    # V2 requests this model refuses: 400
    "missing_image": ({"inputs": valid()["inputs"][:2]}, 400, r"missing required input.*image"),
    "unknown_input": (changed("description", name="colour"), 400, r"unknown input 'colour'"),
    "duplicate_input": ({"inputs": valid()["inputs"] + valid()["inputs"][:1]}, 400, r"more than once"),
    "wrong_datatype": (changed("designation", datatype="FP32", data=[1.0]), 400, r"designation.*BYTES"),
    "shape_rank_3": (changed("image", shape=[1, 2, 3]), 400, r"image.*shape"),
    "shape_n_by_2": (changed("image", shape=[1, 2]), 400, r"image.*shape"),
    "shape_strings": (changed("image", shape=["1"]), 400, r"image.*shape"),
    "shape_bool": (changed("image", shape=[True]), 400, r"image.*shape"),
    "shape_empty": (changed("image", shape=[]), 400, r"image.*shape"),
    "shape_negative": (changed("image", shape=[-1]), 400, r"at least one product"),
    "shape_vs_data": (changed("image", shape=[3]), 400, r"declares shape \[3\] but holds 1"),
    "data_int": (changed("designation", data=5), 400, r"data must be a list"),
    "data_string": (changed("designation", data="Piscine"), 400, r"data must be a list"),
    "data_object": (changed("designation", data={"a": 1}), 400, r"data must be a list"),
    "mismatched_n": (changed("image", n=2, shape=[1], data=[b64(PRODUCT.image)]), 400, r"different numbers"),
    "too_many_products": (valid(9), 400, r"at most 8"),
    "empty_batch": (changed("image", shape=[0], data=[]), 400, r"at least one product"),
    "designation_int": (changed("designation", data=[12]), 400, r"designation\[0\] must be a string"),
    "designation_null": (changed("designation", data=[None]), 400, r"designation\[0\] must be a string"),
    "designation_object": (changed("designation", data=[{"t": "x"}]), 400, r"designation\[0\] must be a string"),
    "designation_too_long": (changed("designation", data=["x" * 5001]), 400, r"designation\[0\] has 5001"),
    "description_too_long": (changed("description", data=["<" * 5001]), 400, r"description\[0\] has 5001"),
    "image_int": (changed("image", data=[3]), 400, r"image\[0\] must be base64"),
    "invalid_base64": (changed("image", data=["not base64 at all!"]), 400, r"image\[0\] is not valid base64"),
    "empty_image": (changed("image", data=[""]), 400, r"image\[0\] is empty"),
    "not_an_image": (changed("image", data=[b64(b"hello world" * 10)]), 400, r"not a recognised image"),
    "truncated_image": (changed("image", data=[b64(image()[:700])]), 400, r"corrupt|truncated"),
    "decompression_bomb": (changed("image", data=[b64(image("PNG", (20000, 20000), "1"))]), 400, r"pixels"),
    "oversize_image": (changed("image", data=[b64(b"\xff" * 2_100_000)]), 400, r"limit"),
    "gif_image": (changed("image", data=[b64(image("GIF", (40, 40)))]), 400, r"format GIF"),
    "bmp_image": (changed("image", data=[b64(image("BMP", (40, 40)))]), 400, r"format BMP"),
    "pixel_budget": (changed("image", n=2, data=[b64(image("PNG", (4000, 4000)))] * 2), 400,
                     r"takes 32000000 pixels, the limit is 20000000"),
    "top_k_28": ({**valid(), "parameters": {"top_k": 28}}, 400, r"top_k"),
    "top_k_0": ({**valid(), "parameters": {"top_k": 0}}, 400, r"top_k"),
    "top_k_string": ({**valid(), "parameters": {"top_k": "3"}}, 400, r"top_k"),
    "top_k_bool": ({**valid(), "parameters": {"top_k": True}}, 400, r"top_k"),
    "top_k_float": ({**valid(), "parameters": {"top_k": 2.5}}, 400, r"top_k"),
    "id_object": ({**valid(), "id": {"a": 1}}, 400, r'"id" must be a string'),
    "id_int": ({**valid(), "id": 12}, 400, r'"id" must be a string'),
    "id_too_long": ({**valid(), "id": "x" * 65}, 400, r'"id" has 65 characters, limit is 64'),
    "id_one_megabyte": ({**valid(), "id": "x" * 1_000_000}, 400, r'"id" has 1000000 characters'),
    # the binary tensor extension
    "binary_input_parameters_list": (binary(_set(["inputs", 2, "parameters"], [1])), 422, r"parameters"),
    "binary_shape_int": (binary(_set(["inputs", 0, "shape"], 1)), 422, r"shape must be a list"),
    "binary_data_int": (binary(_set(["inputs", 0, "data"], 5)), 400, r"data must be a list"),
    "binary_size_beyond_body": (binary(_set(["inputs", 2, "parameters", "binary_data_size"], 10**9)), 400,
                                r"only \d+ bytes remain"),
    "binary_size_string": (binary(_set(["inputs", 2, "parameters", "binary_data_size"], "12")), 400,
                           r"binary_data_size"),
    "binary_size_negative": (binary(_set(["inputs", 2, "parameters", "binary_data_size"], -4)), 400,
                             r"binary_data_size"),
    "binary_trailing_bytes": (binary(extra=b"extra"), 400, r"5 bytes after the last binary input"),
    "binary_element_too_long": (binary(_set(["inputs", 2, "parameters", "binary_data_size"], 8),
                                       tail=struct.pack("<I", 999) + b"abcd"), 400, r"999-byte element"),
    "binary_split_length": (binary(_set(["inputs", 2, "parameters", "binary_data_size"], 2), tail=b"\x01\x00"),
                            400, r"ends inside an element length"),
    "binary_header_not_int": ((binary()[0], {**binary()[1], "Inference-Header-Content-Length": "abc"}), 400,
                              r"must be an integer"),
    "binary_header_zero": ((binary()[0], {**binary()[1], "Inference-Header-Content-Length": "0"}), 400,
                           r"but the body has"),
    "binary_header_too_big": ((binary()[0], {**binary()[1], "Inference-Header-Content-Length": "99999999"}), 400,
                              r"but the body has"),
    "binary_json_malformed": ((b"{not json" + b"x" * 10, {"Inference-Header-Content-Length": "9"}), 422,
                              r"not valid JSON"),
    "binary_fp32_tensor": (binary(lambda h: h["inputs"][2].update(datatype="FP32", shape=[100000],
                                                                   parameters={"binary_data_size": len(FLOATS)}),
                                  tail=FLOATS), 400, r"must have datatype BYTES"),
    "binary_data_and_size": (binary(_set(["inputs", 2, "data"], ["x"])), 422, r"both data and binary_data_size"),
    # HTTP around the body
    "timeout_header_text": ((json.dumps(valid()).encode(), {**JSON, "timeout": "soon"}), 400, r"could not convert"),
    "timeout_header_negative": ((json.dumps(valid()).encode(), {**JSON, "timeout": "-1"}), 400, r"positive"),
}


def send(url: str, case):
    if isinstance(case, tuple):
        body, headers = case
    elif isinstance(case, bytes):
        body, headers = case, JSON
    else:
        body, headers = json.dumps(case).encode(), JSON
    return post(infer_url(url), body, headers)


@pytest.fixture(scope="module")
def reference(hostile_url):
    status, answer = send(hostile_url.url, valid())
    assert status == 200, answer
    return parse_response(answer)


def test_the_table_is_the_campaign_size():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_request_gets_a_4xx_and_the_server_answers_correctly_after(hostile_url, reference, case):
    body, expected, pattern = CASES[case]
    status, answer = send(hostile_url.url, body)
    assert status == expected, answer
    if pattern:
        assert re.search(pattern, answer["error"]), answer["error"]
    assert len(json.dumps(answer)) < 2000  # the input is never echoed back
    status, again = send(hostile_url.url, valid())
    assert status == 200 and parse_response(again) == reference
    assert hostile_url.process.poll() is None


# -- the HTTP layer ---------------------------------------------------------------------------------
def raw_http(url: str, data: bytes, read_timeout: float = 10) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server answered and closed before reading it all
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


PATH = b"/v2/models/rakuten-classifier/infer"
HTTP_CASES = {
    "body_over_limit": (b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n", 413),
    "chunked_over_limit": (b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           + (b"100000\r\n" + b"a" * 0x100000 + b"\r\n") * 5 + b"0\r\n\r\n", 413),
    "content_length_text": (b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400),
    "header_too_large": (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", 431),
    "too_many_headers": (b"GET /v2 HTTP/1.1\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(60)) + b"\r\n", 431),
    "url_too_long": (b"GET /v2?" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "not_http": (b"HELLO WORLD\r\n\r\n", 400),
    "get_on_infer": (b"GET " + PATH + b" HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "unknown_model": (b"POST /v2/models/other/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 404),
    "v1_route": (b"POST /v1/models/rakuten-classifier:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                 404),
    "repository_unload": (b"POST /v2/repository/models/rakuten-classifier/unload HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 0\r\n\r\n", 404),
}


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_http_level_refusals(hostile_url, reference, case):
    data, expected = HTTP_CASES[case]
    assert status_of(raw_http(hostile_url.url, data)) == expected
    assert parse_response(send(hostile_url.url, valid())[1]) == reference


def test_a_slow_body_gets_a_408(hostile_url):
    started = time.monotonic()
    response = raw_http(hostile_url.url, b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    assert status_of(response) == 408 and time.monotonic() - started < 8


@pytest.mark.parametrize("after_a_request", [False, True], ids=["new-connection", "kept-alive-connection"])
def test_slow_headers_are_cut_off(hostile_url, after_a_request):
    """A client dribbling header bytes (slowloris) loses its connection after --header_timeout_seconds,
    on a new connection and on one kept alive after an answer (the keep-alive timer stops at the
    first byte of the next request: the header timer must take over)."""
    host, port = hostile_url.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        if after_a_request:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 8:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            sock.settimeout(0.5)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed and time.monotonic() - started < 6


def test_a_connection_flood_does_not_lock_clients_out(hostile_url, reference):
    """Four times --max_connections idle and half-sent connections: the server closes the oldest to make
    room, so probes and inference still get through and no descriptor runs out."""
    host, port = hostile_url.url.removeprefix("http://").split(":")
    flood = []
    try:
        for i in range(256):
            sock = socket.create_connection((host, int(port)), timeout=5)
            if i % 2:
                sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            flood.append(sock)
        with urllib.request.urlopen(f"{hostile_url.url}/v2/health/ready", timeout=10) as response:
            assert response.status == 200
        status, answer = send(hostile_url.url, valid())
        assert status == 200 and parse_response(answer) == reference
    finally:
        for sock in flood:
            sock.close()
    assert "Invalid HTTP request" not in hostile_url.logs() and "out of system resource" not in hostile_url.logs()


def test_request_id_is_honoured_or_generated_and_logged(hostile_url):
    body = json.dumps(valid()).encode()
    request = urllib.request.Request(infer_url(hostile_url.url), data=body, headers={**JSON, "X-Request-ID": "abc-123"})
    with urllib.request.urlopen(request) as response:
        assert response.headers["X-Request-ID"] == "abc-123"
    request = urllib.request.Request(infer_url(hostile_url.url), data=body,
                                     headers={**JSON, "X-Request-ID": "bad id\twith spaces"})
    with urllib.request.urlopen(request) as response:
        generated = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    status, answer = post(infer_url(hostile_url.url), b"{", {**JSON, "X-Request-ID": "err-42"})
    assert status == 422
    # Access lines are written after the answer: wait for the last one rather than for a fixed time.
    wait_until(lambda: "id=err-42" in hostile_url.logs(), 10, "the access lines", interval=0.05)
    logs = hostile_url.logs()
    assert re.search(r'"POST /v2/models/rakuten-classifier/infer" 200 [\d.]+ms id=abc-123', logs)
    assert f"id={generated}" in logs
    assert re.search(r"WARNING rakuten.model_server: 422 .* id=err-42 malformed_request", logs)
    assert "Traceback" not in logs  # refusals are one line each, never a traceback
