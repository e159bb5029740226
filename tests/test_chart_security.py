"""Pod Security and NetworkPolicy flows of every scenario: restricted containers with limits,
exactly the connections each component needs, and a predictor closed to other namespaces by
default (issue 9, finding 6) but open to the monitoring namespace and the NodePort path."""
from __future__ import annotations

import pytest

from tests.support.helm import (
    SCENARIO_IDS,
    by_kind,
    container,
    containers,
    matches,
    pod_views,
    render,
    views_by_component,
)
from tests.support.netpol import Endpoint, address, allowed, pod

pytestmark = pytest.mark.helm

NODE = "172.18.0.3"  # a kind node's address: NodePort traffic arrives from it after kube-proxy's SNAT


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_every_container_is_restricted_and_bounded(rendered, scenario):
    """Pod Security 'restricted' + read-only root FS + requests and limits, for every container
    of every pod the chart makes (hooks, init containers and the `helm test` pod included)."""
    views = pod_views(rendered[scenario])
    assert len(views) >= 3
    for view in views:
        pod_sc = view.spec.get("securityContext", {})
        # an API token only where the rollout needs one: training pods, under their own ServiceAccount
        rollout = view.labels.get("app.kubernetes.io/component") == "training" and \
            view.spec["serviceAccountName"].endswith("-training")
        assert view.spec.get("automountServiceAccountToken") is rollout, view.where
        volumes = {v["name"]: v for v in view.spec.get("volumes", [])}
        for c in containers(view.spec):
            where = f"{view.where}/{c['name']}"
            sc = c.get("securityContext", {})
            effective = {**pod_sc, **sc}
            assert effective.get("runAsNonRoot") is True, where
            assert isinstance(effective.get("runAsUser"), int) and effective["runAsUser"] > 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert not sc.get("privileged"), where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {kind}"


def labels(objects: list[dict], component: str) -> dict[str, str]:
    return views_by_component(objects)[component][0].labels


@pytest.mark.parametrize("scenario", [s for s in SCENARIO_IDS if s != "external-s3-no-monitoring"])
def test_network_policies_allow_exactly_the_needed_flows(rendered, scenario):
    objects = rendered[scenario]
    policies = by_kind(objects, "NetworkPolicy")
    assert policies
    views = pod_views(objects)
    for policy in policies:  # every selector selects something
        name = policy["metadata"]["name"]
        assert any(matches(policy["spec"]["podSelector"], v.labels) for v in views), name
    comp = views_by_component(objects)
    at = {component: pod(labels(objects, component)) for component in comp}
    api = container(comp["minio"][0], "minio")["ports"][0]["containerPort"]
    ui = container(comp["mlflow"][0], "mlflow")["ports"][0]["containerPort"]
    stranger = pod({"app": "curl"})
    for client in ("training", "predictor", "mlflow", "minio-provisioning"):
        assert allowed(policies, at[client], at["minio"], api), f"{client} -> MinIO"
    assert not allowed(policies, stranger, at["minio"], api), "MinIO open to foreign pods"
    assert allowed(policies, at["training"], at["mlflow"], ui), "training -> MLflow"
    assert not allowed(policies, at["predictor"], at["mlflow"], ui), "predictor -> MLflow should be closed"
    assert allowed(policies, at["mlflow"], at["minio"], api)
    dns = Endpoint({"k8s-app": "kube-dns"}, "kube-system")
    for view in views:
        assert allowed(policies, pod(view.labels), dns, 53), view.where
    assert not allowed(policies, at["predictor"], address("203.0.113.7"), 443), "predictor egress should be closed"


@pytest.mark.parametrize("scenario", [s for s in SCENARIO_IDS if s != "external-s3-no-monitoring"])
def test_predictor_is_closed_to_other_namespaces_by_default(rendered, scenario):
    """Finding 6: allowExternalPredictor admitted every namespace. By default now: this
    namespace's pods, the monitoring namespace, Knative's in Knative mode, and through the
    NodePort (when enabled) the HTTP port only."""
    objects = rendered[scenario]
    policies = by_kind(objects, "NetworkPolicy")
    isvc_pod = pod(labels(objects, "predictor"))
    http, grpc = 8080, 8081
    assert allowed(policies, pod(labels(objects, "tests")), isvc_pod, http), "helm test pod"
    assert allowed(policies, pod({"app": "anything"}), isvc_pod, http), "same namespace"
    prometheus = pod({"app.kubernetes.io/name": "prometheus"}, "monitoring")
    assert allowed(policies, prometheus, isvc_pod, http), "monitoring namespace scrapes /metrics"
    node_port = any(s["spec"]["type"] == "NodePort" and s["metadata"]["name"].endswith("-predictor-nodeport")
                    for s in by_kind(objects, "Service"))
    other = pod({"app": "curl"}, "team-b")
    assert not allowed(policies, other, isvc_pod, http), "another namespace reaches the predictor"
    assert not allowed(policies, other, isvc_pod, grpc)
    assert allowed(policies, address(NODE), isvc_pod, http) is node_port
    assert not allowed(policies, address(NODE), isvc_pod, grpc)
    knative = "knative" in scenario
    assert allowed(policies, pod({"app": "activator"}, "knative-serving"), isvc_pod, 8012) is knative


def test_node_port_sources_restrict_the_node_port_path(tools):
    sets = ["predictor.nodePort.enabled=true", "networkPolicy.nodePortSources[0]=172.18.0.0/16"]
    policies = by_kind(render(tools, sets=sets), "NetworkPolicy")
    predictor = pod(labels(render(tools, sets=sets), "predictor"))
    assert allowed(policies, address("172.18.0.3"), predictor, 8080)
    assert not allowed(policies, address("10.9.8.7"), predictor, 8080)


def test_allow_external_predictor_still_opens_it(tools):
    objects = render(tools, sets=["networkPolicy.allowExternalPredictor=true"])
    assert allowed(by_kind(objects, "NetworkPolicy"), pod({"app": "curl"}, "team-b"),
                   pod(labels(objects, "predictor")), 8080)
