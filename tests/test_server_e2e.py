"""End to end over real HTTP: the model server process loaded the model that the training job
published to the S3 API server; every bad input gets a 4xx naming the problem and the server
keeps serving."""
from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from rakuten_common import synthetic
from rakuten_common.labels import PRDTYPECODES, LabelMap
from rakuten_common.v2_client import (
    Product,
    binary_infer_request,
    infer_request,
    infer_url,
    parse_response,
    post,
)
from training_job.training.evaluation import classification_metrics

pytestmark = pytest.mark.e2e
JSON = {"Content-Type": "application/json"}


def jpeg(size=(500, 500), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def call(url: str, body: dict | bytes, headers=JSON) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return post(infer_url(url), raw, headers)


@pytest.fixture(scope="module")
def products(sample_dir) -> list[tuple[Product, int]]:
    """Held-out products: same generator, a seed the model never saw."""
    rng = np.random.default_rng(12345)
    codes = [c for c in PRDTYPECODES for _ in range(4)]
    out = []
    for code in codes:
        designation, description = synthetic.make_text(rng, code)
        buffer = io.BytesIO()
        synthetic.make_image(rng, code).save(buffer, "JPEG", quality=85)
        out.append((Product(designation, description, buffer.getvalue()), code))
    return out


def assert_same_answers(got, expected):
    """Same codes in the same order, probabilities equal to float precision."""
    assert [[c for c, _ in row] for row in got] == [[c for c, _ in row] for row in expected]
    np.testing.assert_allclose([[p for _, p in row] for row in got], [[p for _, p in row] for row in expected],
                               atol=1e-5)


def test_health_and_metadata(server_url):
    with urllib.request.urlopen(f"{server_url}/v2/health/ready") as r:
        assert json.loads(r.read()) == {"ready": True}
    with urllib.request.urlopen(f"{server_url}/v2/models/rakuten-classifier") as r:
        meta = json.loads(r.read())
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        ("designation", "BYTES"), ("description", "BYTES"), ("image", "BYTES")]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("prdtypecode", "INT64"), ("probability", "FP32")]


def test_single_product_answer(server_url, products):
    status, answer = call(server_url, infer_request([products[0][0]], top_k=3, request_id="req-1"))
    assert status == 200, answer
    assert answer["id"] == "req-1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["prdtypecode"]["shape"] == [1, 3] and outputs["prdtypecode"]["datatype"] == "INT64"
    assert outputs["probability"]["shape"] == [1, 3] and outputs["probability"]["datatype"] == "FP32"
    (ranked,) = parse_response(answer)
    assert all(code in PRDTYPECODES for code, _ in ranked)
    probabilities = [p for _, p in ranked]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001


def test_request_without_id_gets_one(server_url, products):
    status, answer = call(server_url, infer_request([products[1][0]]))
    assert status == 200 and answer["id"]


def test_batch_and_optional_description(server_url, products):
    body = infer_request([p for p, _ in products[:5]], top_k=27)
    body["inputs"] = [i for i in body["inputs"] if i["name"] != "description"]
    status, answer = call(server_url, body)
    assert status == 200, answer
    ranked = parse_response(answer)
    assert len(ranked) == 5 and all(sorted(c for c, _ in row) == list(PRDTYPECODES) for row in ranked)


def test_binary_tensor_extension_gives_the_same_answer(server_url, products):
    batch = [p for p, _ in products[:3]]
    status_json, json_answer = call(server_url, infer_request(batch, top_k=2))
    body, headers = binary_infer_request(batch, top_k=2)
    status_bin, bin_answer = call(server_url, body, headers)
    assert status_json == status_bin == 200, bin_answer
    assert_same_answers(parse_response(bin_answer), parse_response(json_answer))


def test_weighted_f1_on_held_out_products_is_well_above_chance(server_url, products):
    labels = LabelMap()
    predicted = []
    for start in range(0, len(products), 16):
        status, answer = call(server_url, infer_request([p for p, _ in products[start:start + 16]]))
        assert status == 200, answer
        predicted += [row[0][0] for row in parse_response(answer)]
    truth = np.array([labels.to_index(code) for _, code in products])
    f1 = classification_metrics(truth, np.array([labels.to_index(c) for c in predicted]), labels.codes)["weighted_f1"]
    print(f"held-out weighted F1 over HTTP: {f1:.3f}")
    assert f1 > 0.3  # chance on 27 classes is about 0.04


def test_concurrent_callers_each_get_their_own_answer(server_url, products):
    """Requests merged by the adaptive batcher must come back to the right caller."""
    singles = [infer_request([p], top_k=3) for p, _ in products[:24]]
    expected = [parse_response(call(server_url, body)[1]) for body in singles]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda body: call(server_url, body), singles * 2))
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert_same_answers(parse_response(answer), expected[i % len(singles)])


def _valid(n=1):
    return infer_request([Product("Piscine tubulaire", "", jpeg())] * n)


def _with(body, target, **changes):
    """A copy of ``body`` with the input named ``target`` changed."""
    body = json.loads(json.dumps(body))
    for tensor in body["inputs"]:
        if tensor["name"] == target:
            tensor.update(changes)
    return body


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")  # 400 Mpx in a few KB
    return buffer.getvalue()


BAD_REQUESTS = {
    # name: (body or raw bytes, expected status, pattern the error must contain)
    "malformed_json": (b'{"inputs": [', 422, None),
    "inputs_not_a_list": ({"inputs": "designation"}, 422, None),
    "missing_image": ({"inputs": [_valid()["inputs"][0]]}, 400, r"missing required input.*image"),
    "unknown_input": (_with(_valid(), "description", name="colour"), 400, r"unknown input 'colour'"),
    "wrong_datatype": (_with(_valid(), "designation", datatype="FP32", data=[1.0]), 400, r"designation.*BYTES"),
    "wrong_shape": (_with(_valid(), "image", shape=[1, 2, 3]), 400, r"image.*shape"),
    "shape_vs_data": (_with(_valid(), "image", shape=[3]), 400, r"image.*declares shape \[3\] but holds 1"),
    "mismatched_n": (_with(_with(_valid(2), "image", shape=[1]), "image", data=[base64.b64encode(jpeg()).decode()]),
                     400, r"different numbers of products"),
    "invalid_base64": (_with(_valid(), "image", data=["not base64 at all!"]), 400, r"image\[0\] is not valid base64"),
    "not_an_image": (_with(_valid(), "image", data=[base64.b64encode(b"hello world" * 10).decode()]), 400,
                     r"image\[0\].*not a recognised image"),
    "truncated_image": (_with(_valid(), "image", data=[base64.b64encode(jpeg()[:700]).decode()]), 400,
                        r"image\[0\].*(corrupt|truncated)"),
    "decompression_bomb": (_with(_valid(), "image", data=[base64.b64encode(_bomb()).decode()]), 400,
                           r"image\[0\].*pixels"),
    "oversize_image": (_with(_valid(), "image", data=[base64.b64encode(b"\xff" * (3 * 1024 * 1024)).decode()]), 400,
                       r"image\[0\].*limit"),
    "too_long_text": (_with(_valid(), "designation", data=["x" * 5001]), 400, r"designation\[0\] has 5001 characters"),
    "too_many_products": (_valid(9), 400, r"at most 8"),
    "top_k_out_of_range": ({**_valid(), "parameters": {"top_k": 28}}, 400, r"top_k"),
    "empty_batch": (_with(_with(_valid(), "designation", shape=[0], data=[]), "image", shape=[0], data=[]), 400,
                    r"at least one product"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(limited_server_url, case):
    body, status, pattern = BAD_REQUESTS[case]
    got, answer = call(limited_server_url, body)
    assert got == status, answer
    if pattern:
        assert re.search(pattern, answer["error"]), answer["error"]
    assert call(limited_server_url, _valid())[0] == 200


def test_binary_payload_errors_are_4xx(limited_server_url):
    body, headers = binary_infer_request([Product("Livre", "", jpeg())])
    assert call(limited_server_url, body[:-10], headers)[0] == 400  # binary part shorter than announced
    headers = {**headers, "Inference-Header-Content-Length": "999999"}
    assert call(limited_server_url, body, headers)[0] == 400
    assert call(limited_server_url, _valid())[0] == 200


def test_rejections_are_counted_by_reason(limited_server_url):
    call(limited_server_url, BAD_REQUESTS["invalid_base64"][0])
    call(limited_server_url, BAD_REQUESTS["malformed_json"][0])
    with urllib.request.urlopen(f"{limited_server_url}/metrics") as r:
        text = r.read().decode()
    for reason in ("invalid_base64", "malformed_request"):
        assert re.search(r'rakuten_rejected_requests_total\{model_name="rakuten-classifier",reason="%s"\} [1-9]' % reason,
                         text), reason
    assert "rakuten_batch_size_bucket" in text and "request_predict_seconds_bucket" in text
    for status in ("200", "400", "422"):
        assert re.search(r'rakuten_requests_total\{model_name="rakuten-classifier",status="%s"\} [1-9]' % status,
                         text), status
    assert re.search(r'rakuten_predictions_total\{model_name="rakuten-classifier",prdtypecode="\d+"\} [1-9]', text)


def test_repository_api_is_off_by_default(limited_server_url):
    status, answer = post(f"{limited_server_url}/v2/repository/models/rakuten-classifier/unload", b"", {})
    assert status == 404
    assert call(limited_server_url, _valid())[0] == 200


def test_readiness_follows_the_model_when_the_repository_api_is_on(published, s3, artifacts_dir, tmp_path):
    """With --enable_repository_api, an unload takes the pod out of service (readiness 503) instead of
    leaving green probes in front of a server that answers every inference with an error."""
    from tests.support.servers import start_model_server

    server, url = start_model_server(published.uri, artifacts_dir / "model_server_repository.log",
                                     env={**s3.env, "MODEL_CACHE_DIR": str(tmp_path / "cache")},
                                     extra_args=["--enable_repository_api", "--drain_seconds=0"])
    try:
        assert call(url, _valid())[0] == 200
        assert post(f"{url}/v2/repository/models/rakuten-classifier/unload", b"", {})[0] == 200
        for path in ("/v2/health/ready", "/v2/models/rakuten-classifier/ready"):
            try:
                urllib.request.urlopen(url + path, timeout=5)
                raise AssertionError(f"{path} still ready after unload")
            except urllib.error.HTTPError as error:
                assert error.code == 503
        assert call(url, _valid())[0] in (404, 503)
        with urllib.request.urlopen(f"{url}/v2/health/live", timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()
