"""The chart's checks against a live cluster (`lookup`, `.Capabilities`), run with
`helm template --dry-run=server` against a fake API server (tests/support/fake_apiserver.py): a missing
KServe or Prometheus Operator fails the install at once with a clear message (issue 9, finding
6), a missing external-S3 existingSecret is refused (finding 1), and generated keys
survive an upgrade."""
from __future__ import annotations

import base64
import os
import subprocess

import pytest
import yaml

from tests.support.fake_apiserver import (
    CORE,
    KSERVE,
    PROMETHEUS_OPERATOR,
    Cluster,
    serving,
)
from tests.support.helm import CHART, NAMESPACE, RELEASE, by_kind

pytestmark = pytest.mark.helm

EXTERNAL = ["minio.enabled=false", "s3.endpoint=s3.example.com:443", "s3.useHttps=true", "auth.existingSecret=ext"]


def template(tools, cluster: Cluster, tmp_path, sets: list[str] = ()) -> subprocess.CompletedProcess:
    with serving(cluster, tmp_path) as kubeconfig:
        args = [tools.helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=server",
                "--disable-openapi-validation"]  # the fake serves no OpenAPI schema (kubernetes-validate checks those)
        for item in sets:
            args += ["--set", item]
        return subprocess.run(args, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "KUBECONFIG": str(kubeconfig)})


def full_cluster() -> Cluster:
    return Cluster(kinds={**CORE, **KSERVE, **PROMETHEUS_OPERATOR})


def test_renders_on_a_cluster_with_every_prerequisite(tools, tmp_path):
    cluster = full_cluster()
    done = template(tools, cluster, tmp_path)
    assert done.returncode == 0, done.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(done.stdout) if d}
    assert {"InferenceService", "PodMonitor", "PrometheusRule"} <= kinds
    assert "/api/v1/namespaces/kube-system" in [r.split("?")[0] for r in cluster.requests], "lookup was not live"


def test_a_cluster_without_kserve_is_refused_at_once(tools, tmp_path):
    done = template(tools, Cluster(kinds={**CORE, **PROMETHEUS_OPERATOR}), tmp_path)
    assert done.returncode != 0
    assert "serves no serving.kserve.io/v1beta1 InferenceService: install KServe (>= 0.16) first" in done.stderr


def test_a_cluster_without_the_prometheus_operator_is_refused_unless_asked_to_skip(tools, tmp_path):
    cluster = Cluster(kinds={**CORE, **KSERVE})
    done = template(tools, cluster, tmp_path)
    assert done.returncode != 0 and "no monitoring.coreos.com/v1 PodMonitor" in done.stderr, done.stderr
    assert "make addon-monitoring" in done.stderr
    skipped = template(tools, cluster, tmp_path, ["monitoring.checkCapabilities=true"])
    assert skipped.returncode == 0, skipped.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(skipped.stdout) if d}
    assert "InferenceService" in kinds and not {"PodMonitor", "PrometheusRule"} & kinds
    assert template(tools, cluster, tmp_path, ["monitoring.enabled=false"]).returncode == 0


def external_secret(annotations: dict | None = None, data: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "ext", "namespace": NAMESPACE, "annotations": annotations or {}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in
                     {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "secret", **(data or {})}.items()}}


def test_external_existing_secret_must_exist_and_needs_no_kserve_annotations(tools, tmp_path):
    """Missing: refused. Without KServe's s3-* annotations: installed (issue 17, item 10: no
    storageUri, so no storage initializer reads them; NOTES.txt says when they would matter,
    tests/test_chart_modes.py)."""
    cluster = full_cluster()
    done = template(tools, cluster, tmp_path, EXTERNAL)
    assert done.returncode != 0 and 'auth.existingSecret "ext" does not exist' in done.stderr, done.stderr
    cluster.add(external_secret())
    done = template(tools, cluster, tmp_path, EXTERNAL)
    assert done.returncode == 0, done.stderr
    cluster.add(external_secret({"serving.kserve.io/s3-endpoint": "s3.example.com:443"}))
    assert template(tools, cluster, tmp_path, EXTERNAL).returncode == 0
    cluster.add(external_secret(data={"S3_ENDPOINT": "s3.example.com:443"}))  # KServe's data-key fallback
    assert template(tools, cluster, tmp_path, EXTERNAL).returncode == 0


def test_generated_keys_are_kept_across_upgrades(tools, tmp_path):
    """What the install generated is read back from the cluster, not generated anew."""
    cluster = full_cluster()
    first = {o["metadata"]["name"]: o for o in by_kind(
        [d for d in yaml.safe_load_all(template(tools, cluster, tmp_path).stdout) if d], "Secret")}
    owned = {"labels": {"app.kubernetes.io/managed-by": "Helm"},
             "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE}}
    for secret in first.values():  # as the install left them (Helm checks that it owns them)
        cluster.add({**secret, "metadata": {"name": secret["metadata"]["name"], "namespace": NAMESPACE, **owned}})
    second = {o["metadata"]["name"]: o for o in by_kind(
        [d for d in yaml.safe_load_all(template(tools, cluster, tmp_path).stdout) if d], "Secret")}
    assert len(first) == 4
    for name, secret in first.items():
        assert second[name]["data"] == secret["data"], name
