"""Inference capture end to end: real model server processes capturing to the real S3 API server
(moto_server). The optional productid input is accepted and recorded (JSON and binary), a bad one
is a 400 naming it; after SIGTERM every answered product is in a file; under load with the queue
forced full every answer is still right and every record is written or counted as dropped; with
the store unreachable serving is unaffected and the failures are counted."""
from __future__ import annotations

import io
import json
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rakuten_common import synthetic
from rakuten_common.artifacts import fetch
from rakuten_common.captures import parse_records_key, read_capture_file
from rakuten_common.labels import PRDTYPECODES
from rakuten_common.processes import free_port, wait_until
from rakuten_common.storage import open_store
from rakuten_common.v2_client import Product, binary_infer_request, infer_request, infer_url, parse_response, post
from tests.support.servers import start_model_server
from tests.test_admission import metric

pytestmark = pytest.mark.e2e
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def products() -> list[Product]:
    rng = np.random.default_rng(2026)
    out = []
    for i, code in enumerate(PRDTYPECODES * 2):
        designation, description = synthetic.make_text(rng, code)
        buffer = io.BytesIO()
        synthetic.make_image(rng, code).save(buffer, "JPEG", quality=85)
        out.append(Product(designation, description, buffer.getvalue(), productid=500_000 + i))
    return out


def call(url: str, body) -> tuple[int, dict]:
    if isinstance(body, tuple):
        return post(infer_url(url), *body)
    return post(infer_url(url), json.dumps(body).encode(), JSON)


def new_bucket(s3) -> str:
    name = f"captures-{free_port()}"
    s3.client().create_bucket(Bucket=name)
    return f"s3://{name}/serving"


def stored_records(uri: str, s3_env) -> list:
    store = open_store(uri)
    records = []
    for obj in store.list_objects("captures"):
        assert parse_records_key(obj.key), obj.key
        records += read_capture_file(store.get_bytes(obj.key), obj.key)
    return records


def capture_server(published, s3, artifacts_dir, tmp_path, name: str, args: list[str], env=None, model_uri=None):
    return start_model_server(model_uri or published.uri, artifacts_dir / f"model_server_{name}.log",
                              env={**s3.env, "MODEL_CACHE_DIR": str(tmp_path / "cache"), "POD_NAME": f"pod-{name}",
                                   **(env or {})},
                              extra_args=["--capture_sample_rate=1", *args])


def test_productid_recorded_and_every_answered_product_written_at_sigterm(published, s3, s3_env, artifacts_dir,
                                                                          tmp_path, products):
    uri = new_bucket(s3)
    # Files only on shutdown: nothing is due by size or age during the test.
    server, url = capture_server(published, s3, artifacts_dir, tmp_path, "capture",
                                 [f"--capture_uri={uri}", "--capture_flush_seconds=600", "--drain_seconds=1"])
    sent = {}  # request id -> (products, answer)
    try:
        for start in range(0, 20, 4):
            batch = products[start:start + 4]
            status, answer = call(url, infer_request(batch, top_k=3, request_id=f"json-{start}"))
            assert status == 200, answer
            sent[answer["id"]] = (batch, parse_response(answer))
        body, headers = binary_infer_request(products[20:23], top_k=3)
        status, answer = call(url, (body, headers))
        assert status == 200, answer
        sent[answer["id"]] = (products[20:23], parse_response(answer))
        anonymous = [Product(p.designation, p.description, p.image) for p in products[23:25]]
        status, answer = call(url, infer_request(anonymous, top_k=3, request_id="no-ids"))
        assert status == 200, answer
        sent["no-ids"] = (anonymous, parse_response(answer))
        bad = infer_request(products[:2], request_id="bad")
        bad["inputs"][3]["datatype"] = "BYTES"
        status, answer = call(url, bad)
        assert status == 400 and "input 'productid' must have datatype INT64" in answer["error"]
        bad["inputs"][3].update(datatype="INT64", shape=[3])
        status, answer = call(url, bad)
        assert status == 400 and "productid" in answer["error"]
        assert metric(url, "rakuten_capture_records_total", outcome="written") == 0  # all still queued
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    records = stored_records(uri, s3_env)
    assert len(records) == sum(len(batch) for batch, _ in sent.values()) == 25
    by_request: dict[str, list] = {}
    for record in records:
        by_request.setdefault(record.request_id, []).append(record)
    assert set(by_request) == set(sent)
    for request_id, (batch, ranked) in sent.items():
        got = by_request[request_id]
        assert [r.productid for r in got] == [p.productid for p in batch]
        assert [r.designation for r in got] == [p.designation for p in batch]
        assert [[c for c, _ in r.top_k] for r in got] == [[c for c, _ in row] for row in ranked]
        np.testing.assert_allclose([[p for _, p in r.top_k] for r in got], [[p for _, p in row] for row in ranked],
                                   atol=1e-6)
    store = open_store(uri)
    assert {o.key for o in store.list_objects("images")} == {r.image_key for r in records}
    assert store.get_bytes(by_request["json-0"][0].image_key) == products[0].image
    assert all(parse_records_key(o.key).pod.startswith("pod-capture-") for o in store.list_objects("captures"))
    assert "Writing the 25 captured records still queued" in server.log_path.read_text(errors="replace")


def test_under_load_with_the_queue_full_answers_stay_right_and_drops_are_counted(published, s3, s3_env,
                                                                                artifacts_dir, tmp_path, products):
    uri = new_bucket(s3)
    one_product = max(len(p.image) + len(p.designation) + len(p.description) for p in products) + 400
    server, url = capture_server(published, s3, artifacts_dir, tmp_path, "capture_full",
                                 [f"--capture_uri={uri}", f"--capture_queue_bytes={3 * one_product}",
                                  "--capture_file_records=2", "--capture_flush_seconds=0.2", "--drain_seconds=0"])
    try:
        bodies = [infer_request([p], top_k=3) for p in products]
        expected = [parse_response(call(url, body)[1]) for body in bodies]
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda body: call(url, body), bodies * 6))
        for i, (status, answer) in enumerate(answers):
            assert status == 200, answer
            got = parse_response(answer)
            assert [c for c, _ in got[0]] == [c for c, _ in expected[i % len(bodies)][0]]
        wait_until(lambda: metric(url, "rakuten_capture_queue_bytes") == 0, 60, "capture queue written", 0.2)
        written = metric(url, "rakuten_capture_records_total", outcome="written")
        dropped = metric(url, "rakuten_capture_records_total", outcome="dropped")
        failed = metric(url, "rakuten_capture_records_total", outcome="failed")
        total = len(bodies) * 7
        print(f"capture under load: {total} products, {written:.0f} written, {dropped:.0f} dropped")
        assert dropped > 0 and failed == 0 and written + dropped == total
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    assert len(stored_records(uri, s3_env)) == written


def test_an_unreachable_store_leaves_serving_unaffected(published, s3, s3_env, artifacts_dir, tmp_path, products):
    bundle, _ = fetch(published.uri, tmp_path / "local-model", progress=lambda line: None)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server, url = capture_server(published, s3, artifacts_dir, tmp_path, "capture_dead",
                                 ["--capture_uri=s3://rakuten-captures/serving", "--capture_file_records=1",
                                  "--capture_flush_seconds=0.2"],
                                 env={"AWS_ENDPOINT_URL": dead}, model_uri=str(bundle))
    try:
        for product in products[:10]:
            status, answer = call(url, infer_request([product], top_k=2))
            assert status == 200, answer
            assert parse_response(answer)[0][0][0] in PRDTYPECODES
        wait_until(lambda: metric(url, "rakuten_capture_queue_bytes") == 0
                   and metric(url, "rakuten_capture_records_total", outcome="failed") == 10,
                   90, "failed captures counted", 0.5)
        assert metric(url, "rakuten_capture_records_total", outcome="written") == 0
        status, _ = call(url, infer_request(products[:1]))
        assert status == 200
    finally:
        server.stop()
    logs = server.log_path.read_text(errors="replace")
    assert "WARNING rakuten.capture: capture: 1 records not written to s3://rakuten-captures/serving" in logs
