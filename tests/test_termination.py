"""Graceful termination: on SIGTERM readiness fails at once (REST and gRPC), requests are still
served for --drain_seconds, then the process stops; the chart's preStop and grace period are
consistent with it. A real server process; the chart rendered by the real helm."""
from __future__ import annotations

import io
import json
import signal
import time
import urllib.error
import urllib.request

import grpc
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from PIL import Image

from rakuten_common.processes import wait_until
from rakuten_common.v2_client import Product, infer_request, infer_url, post
from tests.support.helm import one, render
from tests.support.servers import start_model_server

pytestmark = pytest.mark.e2e
DRAIN = 4


def image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (500, 500), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_sigterm_fails_readiness_first_serves_through_the_drain_then_stops(published, s3, artifacts_dir,
                                                                          tmp_path):
    server, url = start_model_server(published.uri, artifacts_dir / "model_server_termination.log",
                                     env={**s3.env, "MODEL_CACHE_DIR": str(tmp_path / "cache")},
                                     extra_args=[f"--drain_seconds={DRAIN}", "--shutdown_timeout_seconds=5"])
    target = "127.0.0.1:" + next(a.split("=")[1] for a in server.args if a.startswith("--grpc_port="))
    health = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
    body = json.dumps(infer_request([Product("Lampe de bureau", "", image())])).encode()
    try:
        assert status(f"{url}/v2/health/ready") == 200
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until(lambda: status(f"{url}/v2/health/ready") == 503, 5, "readiness failing after SIGTERM",
                   interval=0.05)
        assert status(f"{url}/v2/models/rakuten-classifier/ready") == 503
        assert status(f"{url}/v2/health/live") == 200
        assert not health.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        served = 0
        while time.monotonic() - signalled < DRAIN - 1:
            code, answer = post(infer_url(url), body, {"Content-Type": "application/json"}, timeout=10)
            assert code == 200, answer
            served += 1
            time.sleep(0.2)
        assert served >= 5
        assert server.process.wait(timeout=DRAIN + 15) == 0
        stopped = time.monotonic() - signalled
        assert stopped >= DRAIN - 0.5
    finally:
        server.stop()
    logs = server.log_path.read_text(errors="replace")
    assert "readiness now fails; serving for 4.0 s more" in logs and "Server stopped" in logs


def test_chart_grace_period_covers_prestop_drain_and_shutdown(tools):
    objects = render(tools, sets=["predictor.termination.preStopSleepSeconds=7",
                                  "predictor.termination.drainSeconds=6",
                                  "predictor.termination.shutdownTimeoutSeconds=12"])
    predictor = one(objects, "InferenceService")["spec"]["predictor"]
    container = predictor["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert env["DRAIN_SECONDS"] == "6" and env["SHUTDOWN_TIMEOUT_SECONDS"] == "12"
    assert predictor["terminationGracePeriodSeconds"] == 7 + 6 + 12 + 5
    readiness = container["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/v2/health/ready"  # what the drain fails first
