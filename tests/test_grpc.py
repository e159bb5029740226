"""V2 over gRPC end to end, with KServe's own client (``kserve.InferenceGRPCClient``): BYTES as
``raw_input_contents`` (its default, and the only way it sends image files) and as typed
``bytes_contents``; the same answers as REST; malformed requests are INVALID_ARGUMENT (the 4xx of
gRPC) and the server keeps answering; the repository API is off; readiness is honest."""
from __future__ import annotations

import asyncio
import io
import json
import re
import struct

import grpc
import numpy as np
import pytest
from kserve import InferenceGRPCClient
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image

from rakuten_common.processes import wait_until
from rakuten_common.v2_client import (
    Product,
    infer_request,
    infer_url,
    parse_response,
    post,
)
from tests.support.servers import start_model_server

pytestmark = pytest.mark.e2e
MODEL = "rakuten-classifier"


def jpeg(colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (500, 500), colour).save(buffer, "JPEG")
    return buffer.getvalue()


PRODUCTS = [Product("Piscine tubulaire ronde", "<p>Filtration incluse</p>", jpeg()),
            Product("Figurine Pop manga", "", jpeg((20, 180, 60)))]


@pytest.fixture(scope="module")
def grpc_server(published, s3, artifacts_dir, tmp_path_factory):
    server, url = start_model_server(published.uri, artifacts_dir / "model_server_grpc.log",
                                     env={**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))},
                                     extra_args=["--max_request_items=8", "--drain_seconds=0"])
    port = next(a.split("=")[1] for a in server.args if a.startswith("--grpc_port="))
    server.url, server.target = url, f"127.0.0.1:{port}"
    yield server
    server.stop()


def kserve_request(products, raw: bool = True, top_k: int = 3, request_id: str = "g-1") -> InferRequest:
    columns = {"designation": [p.designation.encode() for p in products],
               "description": [p.description.encode() for p in products],
               "image": [p.image for p in products]}
    inputs = []
    for name, values in columns.items():
        tensor = InferInput(name=name, shape=[len(products)], datatype="BYTES")
        if raw:
            tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=True)
        else:
            tensor.data = values
        inputs.append(tensor)
    return InferRequest(model_name=MODEL, infer_inputs=inputs, request_id=request_id, parameters={"top_k": top_k})


def grpc_infer(target: str, request: InferRequest, headers=None):
    async def call():
        client = InferenceGRPCClient(url=target, timeout=30, retries=2)
        try:
            return await client.infer(request, headers=headers)
        finally:
            await client.close()
    return asyncio.run(call())


def ranked(response) -> list[list[tuple[int, float]]]:
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    return [[(int(c), float(p)) for c, p in zip(codes, probs)]
            for codes, probs in zip(outputs["prdtypecode"], outputs["probability"])]


@pytest.fixture(scope="module")
def rest_answer(grpc_server):
    status, answer = post(infer_url(grpc_server.url), json.dumps(infer_request(PRODUCTS, top_k=3)).encode(),
                          {"Content-Type": "application/json"})
    assert status == 200, answer
    return parse_response(answer)


def same(got, expected):
    assert [[c for c, _ in row] for row in got] == [[c for c, _ in row] for row in expected]
    np.testing.assert_allclose([[p for _, p in row] for row in got], [[p for _, p in row] for row in expected],
                               atol=1e-5)


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "typed_contents"])
def test_kserve_client_gets_the_rest_answer(grpc_server, rest_answer, raw):
    response = grpc_infer(grpc_server.target, kserve_request(PRODUCTS, raw=raw))
    assert response.id == "g-1"
    same(ranked(response), rest_answer)


def stub(target: str):
    return grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))


def framed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def proto(inputs=None, raw=None, **fields) -> pb.ModelInferRequest:
    """A ModelInferRequest, raw by default: one product, ``inputs``/``raw`` replaceable."""
    product = PRODUCTS[0]
    if inputs is None:
        inputs = [pb.ModelInferRequest.InferInputTensor(name=n, datatype="BYTES", shape=[1])
                  for n in ("designation", "description", "image")]
    if raw is None:
        raw = [framed(product.designation.encode()), framed(product.description.encode()), framed(product.image)]
    return pb.ModelInferRequest(model_name=fields.pop("model_name", MODEL), inputs=inputs, raw_input_contents=raw,
                                **fields)


def tensor(name="designation", datatype="BYTES", shape=(1,), contents=None):
    t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    if contents is not None:
        t.contents.CopyFrom(contents)
    return t


THREE = ("designation", "description", "image")
BAD = {
    "unknown_input": (proto(inputs=[tensor(n if n != "description" else "colour") for n in THREE]),
                      grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'colour'"),
    "wrong_datatype": (proto(inputs=[tensor(n, "FP32" if n == "image" else "BYTES") for n in THREE]),
                       grpc.StatusCode.INVALID_ARGUMENT, "BYTES"),
    "shape_mismatch": (proto(inputs=[tensor(n, shape=(2,)) for n in THREE]), grpc.StatusCode.INVALID_ARGUMENT,
                       "declares shape"),
    "broken_framing": (proto(raw=[framed(b"Lampe"), framed(b""), struct.pack("<I", 9999) + b"abc"]),
                       grpc.StatusCode.INVALID_ARGUMENT, "9999-byte element"),
    "raw_count_mismatch": (proto(raw=[framed(b"Lampe")]), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    "raw_and_contents": (proto(inputs=[tensor(n, contents=pb.InferTensorContents(bytes_contents=[b"x"]))
                                       for n in THREE]), grpc.StatusCode.INVALID_ARGUMENT, "contents"),
    "not_an_image": (proto(raw=[framed(b"Lampe"), framed(b""), framed(b"hello" * 20)]),
                     grpc.StatusCode.INVALID_ARGUMENT, "not a recognised image"),
    "designation_not_utf8": (proto(raw=[framed(b"\xff\xfe"), framed(b""), framed(PRODUCTS[0].image)]),
                             grpc.StatusCode.INVALID_ARGUMENT, "not valid UTF-8"),
    "no_data": (proto(raw=[]), grpc.StatusCode.INVALID_ARGUMENT, "has no data|holds 0 elements"),
    "too_many_products": (proto(inputs=[tensor(n, shape=(9,)) for n in THREE]), grpc.StatusCode.INVALID_ARGUMENT,
                          "at most 8"),
    "top_k_out_of_range": (proto(parameters={"top_k": pb.InferParameter(int64_param=99)}),
                           grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    "id_too_long": (proto(id="x" * 1000), grpc.StatusCode.INVALID_ARGUMENT, '"id" has 1000 characters'),
    "unknown_model": (proto(model_name="other"), grpc.StatusCode.NOT_FOUND, "other"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_grpc_requests_are_invalid_argument_and_the_server_keeps_answering(grpc_server, rest_answer,
                                                                                     case):
    request, code, text = BAD[case]
    with pytest.raises(grpc.RpcError) as error:
        stub(grpc_server.target).ModelInfer(request, timeout=30)
    assert error.value.code() == code, error.value.details()
    assert re.search(text, error.value.details()), error.value.details()
    same(ranked(grpc_infer(grpc_server.target, kserve_request(PRODUCTS))), rest_answer)


def test_repository_api_is_off_and_readiness_is_honest(grpc_server):
    api = stub(grpc_server.target)
    with pytest.raises(grpc.RpcError) as error:
        api.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert api.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert api.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10).ready
    assert api.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_request_id_comes_back_as_metadata_and_in_the_access_line(grpc_server):
    call = stub(grpc_server.target).ModelInfer.with_call(proto(id="abc"), metadata=(("x-request-id", "grpc-77"),),
                                                         timeout=30)
    response, rpc = call
    assert ("x-request-id", "grpc-77") in tuple(rpc.initial_metadata())
    assert response.id == "abc"
    # The access line is written after the answer: wait for it rather than for a fixed time.
    wait_until(lambda: "id=grpc-77" in grpc_server.logs(), 10, "the gRPC access line", interval=0.05)
    line = next(line for line in grpc_server.logs().splitlines() if "id=grpc-77" in line)
    assert '"grpc ModelInfer" OK' in line
