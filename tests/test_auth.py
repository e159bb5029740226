"""Authentication and rate limiting on a real server: API keys from a file (as a mounted Secret),
401 without detail, probes open, /metrics on its own port, per-key 429 with Retry-After, keys
re-read when the file changes, the same over gRPC; and the chart value that turns it on."""
from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request

import grpc
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from PIL import Image

from model_server.auth import ApiKeys, RateLimiter, credential
from rakuten_common.processes import free_port
from rakuten_common.v2_client import Product, infer_request, infer_url, post
from tests.support.helm import by_kind, one, render
from tests.support.servers import start_model_server

pytestmark = pytest.mark.e2e
KEY, OTHER = "k-" + "a" * 30, "k-" + "b" * 30


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), (10, 120, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


BODY = json.dumps(infer_request([Product("Tente de camping", "", jpeg())])).encode()
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def keyed(published, s3, artifacts_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("secret")
    keys = folder / "api-keys"
    keys.write_text(f"# one key per line\n{KEY}\n")
    metrics_port = free_port()
    server, url = start_model_server(
        published.uri, artifacts_dir / "model_server_auth.log",
        env={**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "API_KEYS_FILE": str(keys)},
        extra_args=["--rate_limit_rps=2", "--rate_limit_burst=3", f"--metrics_port={metrics_port}",
                    "--drain_seconds=0"])
    server.url, server.keys, server.metrics_url = url, keys, f"http://127.0.0.1:{metrics_port}/metrics"
    server.grpc_target = "127.0.0.1:" + next(a.split("=")[1] for a in server.args if a.startswith("--grpc_port="))
    yield server
    server.stop()


def get(url: str, headers=None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_keys_are_required_except_for_probes(keyed):
    assert post(infer_url(keyed.url), BODY, JSON)[0] == 401
    status, answer = post(infer_url(keyed.url), BODY, {**JSON, "Authorization": f"Bearer {OTHER}"})
    assert (status, answer) == (401, {"error": "unauthorized"})
    assert get(f"{keyed.url}/v2/models/rakuten-classifier")[0] == 401
    for probe in ("/v2/health/live", "/v2/health/ready", "/v2/models/rakuten-classifier/ready"):
        assert get(keyed.url + probe)[0] == 200
    time.sleep(1.5)  # a full bucket for the next test
    assert post(infer_url(keyed.url), BODY, {**JSON, "Authorization": f"Bearer {KEY}"})[0] == 200
    assert post(infer_url(keyed.url), BODY, {**JSON, "X-API-Key": KEY})[0] == 200


def test_metrics_only_on_their_own_port(keyed):
    assert get(f"{keyed.url}/metrics", {"Authorization": f"Bearer {KEY}"})[0] == 404
    status, _, text = get(keyed.metrics_url)
    assert status == 200 and b'rakuten_rejected_requests_total{model_name="rakuten-classifier",reason="unauthenticated"}' in text


def test_rate_limit_per_key_gives_429_with_retry_after(keyed):
    time.sleep(2)
    statuses, retry_after = [], None
    for _ in range(8):
        request = urllib.request.Request(infer_url(keyed.url), data=BODY, headers={**JSON, "X-API-Key": KEY})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
            retry_after = retry_after or error.headers.get("Retry-After")
    assert statuses.count(429) >= 3 and statuses[:3] == [200, 200, 200], statuses
    assert retry_after is not None and int(retry_after) >= 1


def test_keys_file_is_re_read_when_it_changes(keyed):
    keyed.keys.write_text(f"{OTHER}\n")
    deadline = time.monotonic() + 15
    while post(infer_url(keyed.url), BODY, {**JSON, "X-API-Key": OTHER})[0] != 200:
        assert time.monotonic() < deadline, "new key not picked up"
        time.sleep(1)
    assert post(infer_url(keyed.url), BODY, {**JSON, "X-API-Key": KEY})[0] == 401
    keyed.keys.write_text(f"{KEY}\n")
    time.sleep(6)


def test_grpc_needs_the_key_too(keyed):
    api = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(keyed.grpc_target))
    request = pb.ModelMetadataRequest(name="rakuten-classifier")
    with pytest.raises(grpc.RpcError) as error:
        api.ModelMetadata(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED and error.value.details() == "unauthorized"
    assert api.ModelMetadata(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=10).name
    assert api.ServerReady(pb.ServerReadyRequest(), timeout=10).ready  # probes stay open


def test_key_comparison_and_rate_limiter_in_isolation(tmp_path):
    keys = ApiKeys(["alpha", "beta"], None)
    assert keys.check("beta") and keys.check("alpha") != keys.check("beta")
    assert keys.check("alph") is None and keys.check("") is None and keys.check(None) is None
    assert credential("Bearer  tok ", None) == "tok" and credential("Basic x", None) is None
    assert credential(None, "k") == "k"
    assert not ApiKeys([], None).enabled
    limiter = RateLimiter(rate=1, burst=2)
    assert [limiter.acquire("a") for _ in range(3)] == [0, 0, 1] and limiter.acquire("b") == 0


def test_chart_turns_keys_on_with_a_generated_secret_and_keeps_metrics_for_prometheus(tools):
    objects = render(tools, sets=["predictor.apiKeys.enabled=true", "predictor.apiKeys.rateLimitRps=50"])
    secret = next(o for o in by_kind(objects, "Secret") if o["metadata"]["name"].endswith("-api-keys"))
    assert len(base64.b64decode(secret["data"]["api-keys"]).strip()) == 40
    isvc = one(objects, "InferenceService")
    container = isvc["spec"]["predictor"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert env["API_KEYS_FILE"] == mount["mountPath"] + "/api-keys" and env["RATE_LIMIT_RPS"] == "50"
    volume = next(v for v in isvc["spec"]["predictor"]["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert env["METRICS_PORT"] == "8082" and {"name": "metrics", "containerPort": 8082, "protocol": "TCP"} in \
        container["ports"]
    assert isvc["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8082"
    monitor = one(objects, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    policy = next(o for o in by_kind(objects, "NetworkPolicy") if o["metadata"]["name"].endswith("predictor"))
    metrics_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8082)
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                                             "monitoring"}}}]
    assert all(8082 not in [p["port"] for p in r["ports"]] for r in policy["spec"]["ingress"] if r is not metrics_rule)
    off = render(tools)
    assert not [o for o in by_kind(off, "Secret") if o["metadata"]["name"].endswith("-api-keys")]
    assert "API_KEYS_FILE" not in {e["name"] for e in one(off, "InferenceService")["spec"]["predictor"]
                                   ["containers"][0]["env"]}
