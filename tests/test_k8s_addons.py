"""k8s/: add-on manifests, values and patches, the pinned versions, and how mk/cluster.mk uses
them (offline: the add-ons themselves install only on a real cluster, `make e2e`)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.cluster_files import (
    CLUSTER_MK,
    K8S,
    KIND_CONFIG,
    WORKFLOWS,
    recipe,
    versions,
)

pytestmark = pytest.mark.helm

VERSION_RE = re.compile(r"^(knative-)?v?\d+\.\d+\.\d+$")


def k8s_yaml_files() -> list[Path]:
    files = sorted(K8S.glob("*.yaml"))
    assert files, "k8s/ has no YAML file"
    return files


def test_k8s_manifests_validate_against_the_kubernetes_schemas():
    """Objects strictly against the pinned Kubernetes' schemas; `*-values.yaml` are Helm values,
    `*-patch.yaml` merge patches (data only) applied with kubectl patch."""
    import kubernetes_validate

    version = versions()["KUBERNETES_VERSION"].lstrip("v")
    manifests = 0
    for path in k8s_yaml_files():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
            if path.name.endswith(("-values.yaml", "-patch.yaml")):
                assert "apiVersion" not in doc and "kind" not in doc, f"{path.name} is not an object"
                continue
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: not a Kubernetes object"
            kubernetes_validate.validate(doc, version, strict=True)
            manifests += 1
    assert manifests >= 3


def test_namespaces_manifest_creates_the_three_namespaces():
    docs = list(yaml.safe_load_all((K8S / "namespaces.yaml").read_text()))
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"} == {"rakuten", "monitoring", "kserve"}


def test_kserve_values_select_standard_mode_without_ingress():
    values = yaml.safe_load((K8S / "kserve-values.yaml").read_text())
    controller = values["kserve"]["controller"]
    assert controller["deploymentMode"] == "Standard"
    assert controller["gateway"]["disableIngressCreation"] is True


def test_metrics_server_values_work_on_kind():
    values = yaml.safe_load((K8S / "metrics-server-values.yaml").read_text())
    assert "--kubelet-insecure-tls" in values["args"]


def test_knative_features_patch_is_a_config_features_merge_patch():
    patch = yaml.safe_load((K8S / "knative-features-patch.yaml").read_text())
    assert set(patch) == {"data"}
    assert all(k.startswith("kubernetes.") and v in ("enabled", "disabled", "allowed") for k, v in patch["data"].items())
    assert "--patch-file k8s/knative-features-patch.yaml" in recipe(CLUSTER_MK, "addon-knative")


def test_versions_are_pinned():
    pins = versions()
    expected = {"KIND_VERSION", "KUBERNETES_VERSION", "CERT_MANAGER_VERSION", "KSERVE_VERSION",
                "METRICS_SERVER_CHART_VERSION", "KUBE_PROMETHEUS_STACK_VERSION", "KEDA_CHART_VERSION",
                "KNATIVE_VERSION"}
    assert expected <= set(pins), expected - set(pins)
    for key, value in pins.items():
        assert VERSION_RE.match(value), f"{key}={value!r} is not an exact version"
    for path in [KIND_CONFIG, CLUSTER_MK, *k8s_yaml_files(), WORKFLOWS / "e2e-kind.yml"]:
        text = path.read_text().replace("ubuntu-latest", "")
        assert not re.search(r"[:/@]latest\b|--version\s+latest", text), f"{path.name} uses 'latest'"


def test_cluster_mk_takes_every_version_from_versions_env():
    text = CLUSTER_MK.read_text()
    assert re.search(r"^include k8s/versions\.env$", text, re.MULTILINE)
    for line in text.splitlines():
        if "--version" in line:
            assert re.search(r"--version \$\([A-Z_]+\)", line), f"hard-coded version: {line.strip()}"
    for key in versions():
        if key not in {"KIND_VERSION", "KUBERNETES_VERSION"}:
            assert f"$({key})" in text, f"{key} is pinned but not used by mk/cluster.mk"
