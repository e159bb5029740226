"""Monitoring wiring of the rendered chart: the PodMonitor and Services select the predictor pods
and their named ports, the kind NodePorts are the port plan, and every metric the dashboard and
the alerts use is exposed by a real model server's /metrics."""
from __future__ import annotations

import json
import re
import urllib.request

import pytest
import yaml

from rakuten_common.v2_client import Product, infer_request, infer_url, post
from tests.support.helm import (
    CHART,
    NAMESPACE,
    SCENARIO_IDS,
    by_kind,
    flag,
    matches,
    one,
    pod_views,
    predictor_pod_labels,
    server_container,
)
from tests.support.servers import REPO

pytestmark = pytest.mark.helm


@pytest.mark.parametrize("scenario", [s for s in SCENARIO_IDS if s != "external-s3-no-monitoring"])
def test_pod_monitor_selects_the_predictor_pods_and_its_metrics_port(rendered, scenario):
    objects = rendered[scenario]
    isvc = one(objects, "InferenceService")
    monitor = one(objects, "PodMonitor")
    labels = predictor_pod_labels(isvc)
    assert matches(monitor["spec"]["selector"], labels)
    # ... and nothing else of the release
    for view in pod_views(objects):
        if view.where != f"InferenceService/{isvc['metadata']['name']}":
            assert not matches(monitor["spec"]["selector"], view.labels), view.where
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"].get("release") == "kube-prometheus-stack"

    server = server_container(isvc)
    annotations = isvc["metadata"]["annotations"]
    http_port = int(flag(server["args"], "http_port"))
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == annotations["prometheus.kserve.io/path"] == "/metrics"
    assert int(annotations["prometheus.kserve.io/port"]) == http_port
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    if annotations["serving.kserve.io/deploymentMode"] == "Knative":
        # Knative renames the user container's (single) port to "user-port"
        assert endpoint["port"] == "user-port" and list(ports.values()) == [http_port]
    else:
        assert ports[endpoint["port"]] == http_port
        assert int(flag(server["args"], "grpc_port")) in ports.values()
    # the `isvc` label the dashboard and alerts select on: Prometheus' name for the pod label
    relabel = endpoint["relabelings"][0]
    pod_label = "serving.kserve.io/inferenceservice"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)]
    assert relabel["targetLabel"] == "isvc" and pod_label in labels


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_services_select_pods_and_named_ports(rendered, scenario):
    objects = rendered[scenario]
    views = pod_views(objects)
    for service in by_kind(objects, "Service"):
        selected = [v for v in views if matches({"matchLabels": service["spec"]["selector"]}, v.labels)]
        assert len(selected) == 1, (service["metadata"]["name"], [v.where for v in selected])
        ports = {p["name"]: p["containerPort"] for c in selected[0].spec["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), (service["metadata"]["name"], target, ports)
            if service["spec"]["type"] != "NodePort":
                assert "nodePort" not in port


def test_kind_node_ports_are_the_port_plan(rendered):
    node_ports = {p["nodePort"]: s["metadata"]["name"] for s in by_kind(rendered["kind"], "Service")
                  for p in s["spec"]["ports"] if "nodePort" in p}
    assert sorted(node_ports) == [30080, 30500, 30901], node_ports
    kps = yaml.safe_load((REPO / "charts" / "kube-prometheus-stack-values.yaml").read_text())
    assert kps["grafana"]["service"]["nodePort"] == 30300
    spec = kps["prometheus"]["prometheusSpec"]
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False
    assert spec["ruleSelectorNilUsesHelmValues"] is False
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    assert sidecar["searchNamespace"] == "ALL" and sidecar["label"] == "grafana_dashboard"
    dashboard_cm = next(o for o in by_kind(rendered["kind"], "ConfigMap") if o["metadata"]["name"].endswith("dashboard"))
    assert dashboard_cm["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]


# ---- metrics used by the dashboard and the alerts exist -------------------------------------

#: Series that Prometheus itself makes (not exposed by the server).
SYNTHETIC = {"up"}
METRIC_RE = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "rakuten-serving.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def rule_exprs(objects: list[dict]) -> list[str]:
    rule = one(objects, "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    names = set(METRIC_RE.findall(expr))
    names |= set(re.findall(r"label_values\((\w+)", expr))
    return names


def scrape_names(url: str) -> tuple[set[str], str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return names, text


def send_valid_and_invalid(url: str, image: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    status, _ = post(infer_url(url), json.dumps(infer_request([Product("Lampe de chevet", "", image)])).encode(), headers)
    assert status == 200
    status, _ = post(infer_url(url), json.dumps({"inputs": []}).encode(), headers)
    assert status == 400


def test_every_dashboard_and_alert_metric_is_exposed_by_the_server(rendered, server_url, sample_dir):
    image = next((sample_dir / "images" / "image_train").glob("*.jpg")).read_bytes()
    send_valid_and_invalid(server_url, image)
    exposed, text = scrape_names(server_url)
    used = {}
    for expr in dashboard_queries() + rule_exprs(rendered["defaults"]):
        for name in metric_names(expr):
            used.setdefault(name, expr)
    assert len(used) >= 12, sorted(used)
    missing = {n: e for n, e in used.items() if n not in exposed and n not in SYNTHETIC}
    assert not missing, f"metrics not on the server's /metrics: {missing}"
    # the label names the panels group by are on the series
    for metric, label in (("rakuten_rejected_requests_total", "reason"), ("rakuten_predictions_total", "prdtypecode"),
                          ("rakuten_model_info", "version"), ("request_predict_seconds_bucket", "model_name")):
        assert re.search(rf"^{metric}\{{[^}}]*\b{label}=", text, re.M), (metric, label)
