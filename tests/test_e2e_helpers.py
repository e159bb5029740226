"""The cluster tests' own plumbing (tests/e2e), against the fake API server: they run only on
a kind cluster (`make e2e`), so what can break without one is checked here: finding the
cluster or saying why not, reading through the API server's service proxy, reading conditions
of client models and of custom objects, and failing a wait with its last reason."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.fake_apiserver import Cluster, serving
from tests.support.servers import REPO

PROBE = r"""
import json, sys
from kubernetes import client
from tests.e2e import cluster as e2e
from tests.e2e.cluster import condition, prometheus
target = e2e.Cluster(context="fake")
out = {"unreachable": e2e.unreachable(target)}
if out["unreachable"] is None:
    out["query"] = prometheus(target, "/api/v1/query", query='sum(rakuten_predictions_total{namespace="rakuten"})')
job = client.V1Job(status=client.V1JobStatus(conditions=[client.V1JobCondition(type="Complete", status="True")]))
out["conditions"] = [condition(job, "Complete"), condition(job, "Failed"),
                     condition({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "Ready"),
                     condition({"status": {}}, "Ready")]
print(json.dumps(out))
"""


def probe(kubeconfig) -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.process
def test_cluster_tests_reach_an_api_server_and_its_service_proxy(tmp_path):
    cluster = Cluster()
    path = "/api/v1/namespaces/monitoring/services/prometheus-operated:9090/proxy/api/v1/query"
    cluster.objects[path] = {"status": "success", "data": {"result": [{"metric": {}, "value": [0, "42"]}]}}
    with serving(cluster, tmp_path) as kubeconfig:
        seen = probe(kubeconfig)
    assert seen["unreachable"] is None
    assert seen["query"]["data"]["result"][0]["value"][1] == "42"
    assert any(r.startswith(path + "?query=sum%28rakuten_predictions_total") for r in cluster.requests)
    assert seen["conditions"] == [True, False, True, False]


@pytest.mark.process
def test_without_a_cluster_they_say_why(tmp_path):
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    seen = probe(tmp_path / "kubeconfig")
    assert "no Kubernetes API for context 'fake'" in seen["unreachable"]


def test_eventually_fails_with_the_last_reason():
    from tests.e2e.cluster import eventually

    reasons = iter(["starting", "still starting"])
    with pytest.raises(pytest.fail.Exception, match="still starting"):
        eventually(lambda: next(reasons, "still starting"), 0.3, "thing", interval=0.1)
    assert eventually(lambda: None, 1, "thing") >= 0
