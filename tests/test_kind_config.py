"""kind-config.yaml and the NodePorts of the chart's kind scenario (offline: no cluster here)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.cluster_files import (
    CHART,
    KPS_VALUES,
    PORT_PLAN,
    REPO,
    kind_config,
    mapped_ports,
    tool,
    versions,
)

pytestmark = pytest.mark.helm

#: kind.x-k8s.io/v1alpha4 fields (sigs.k8s.io/kind/pkg/apis/config/v1alpha4/types.go).
KIND_CLUSTER_FIELDS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates",
                       "runtimeConfig", "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902",
                       "containerdConfigPatches", "containerdConfigPatchesJSON6902"}
KIND_NODE_FIELDS = {"role", "image", "labels", "extraMounts", "extraPortMappings",
                    "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902"}
KIND_PORT_FIELDS = {"containerPort", "hostPort", "listenAddress", "protocol"}


def test_kind_config_uses_v1alpha4_fields_only():
    config = kind_config()
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(config) <= KIND_CLUSTER_FIELDS, set(config) - KIND_CLUSTER_FIELDS
    for node in config["nodes"]:
        assert set(node) <= KIND_NODE_FIELDS, set(node) - KIND_NODE_FIELDS
        assert node["role"] in {"control-plane", "worker"}
        for mapping in node.get("extraPortMappings", []):
            assert set(mapping) <= KIND_PORT_FIELDS, set(mapping) - KIND_PORT_FIELDS
            assert mapping.get("protocol", "TCP") in {"TCP", "UDP", "SCTP"}
            assert isinstance(mapping["containerPort"], int) and isinstance(mapping["hostPort"], int)


def test_kind_cluster_has_one_control_plane_and_two_workers():
    roles = [node["role"] for node in kind_config()["nodes"]]
    assert roles.count("control-plane") == 1
    assert roles.count("worker") == 2


def test_kind_node_image_is_pinned_by_digest_to_the_pinned_kubernetes():
    pinned = versions()["KUBERNETES_VERSION"]
    images = {node.get("image") for node in kind_config()["nodes"]}
    assert len(images) == 1, f"all nodes should run the same image: {images}"
    image = images.pop()
    assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}", image), image
    assert image.split("@")[0] == f"kindest/node:{pinned}"
    minor = int(pinned.split(".")[1])
    assert minor >= 32, "KServe 0.21 needs Kubernetes 1.32 or newer"


def test_kind_port_mappings_are_the_port_plan_on_localhost():
    mappings = mapped_ports()
    assert set(mappings) == set(PORT_PLAN)
    for port, mapping in mappings.items():
        assert mapping["containerPort"] == port, "NodePort N is published as host port N"
        assert mapping.get("listenAddress") == "127.0.0.1", f"{port} must listen on 127.0.0.1 only"
    workers = [n for n in kind_config()["nodes"] if n["role"] == "worker"]
    assert not any(n.get("extraPortMappings") for n in workers), "map once, on the control plane"


def test_cluster_tests_use_the_mapped_ports():
    """tests/e2e reach the predictor and Grafana through the kind host ports."""
    from tests.e2e import cluster

    assert {cluster.model_port(), cluster.grafana_port()} <= set(mapped_ports())
    text = (REPO / "mk" / "cluster.mk").read_text()
    for name, port in (("MODEL_URL", cluster.model_port()), ("GRAFANA_URL", cluster.grafana_port())):
        assert re.search(rf"^{name}\s*\?= http://127\.0\.0\.1:{port}$", text, re.M), name


def rendered_node_ports(values: Path) -> set[int]:
    out = subprocess.run([tool("helm"), "template", "rakuten-serving", str(CHART), "--namespace", "rakuten",
                          "-f", str(values)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ports = set()
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc.get("kind") == "Service" and doc["spec"].get("type") == "NodePort":
            for port in doc["spec"]["ports"]:
                assert "nodePort" in port, f"Service {doc['metadata']['name']}: NodePort without a fixed nodePort"
                ports.add(port["nodePort"])
    return ports


def test_every_node_port_of_the_kind_scenario_has_a_kind_mapping(tools):
    values = CHART / "ci" / "kind-values.yaml"
    ports = rendered_node_ports(values)
    assert ports, f"{values.name} exposes no NodePort"
    assert ports <= set(mapped_ports()), f"NodePorts {sorted(ports - set(mapped_ports()))} have no kind port mapping"
    # the whole plan minus Grafana (kube-prometheus-stack) comes from our chart
    assert set(PORT_PLAN) - {30300} <= ports, f"chart NodePorts {sorted(ports)} miss part of the plan"


def test_grafana_node_port_has_a_kind_mapping():
    grafana = yaml.safe_load(KPS_VALUES.read_text()).get("grafana", {})
    service = grafana.get("service", {})
    assert service.get("type") == "NodePort"
    assert service.get("nodePort") == 30300 and 30300 in mapped_ports()

