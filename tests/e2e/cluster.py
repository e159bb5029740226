"""What the cluster tests address and how they wait: settings from the environment (the make
targets pass theirs), the kubernetes client for the kind context, bounded polling.

Like KServe's own test/e2e, these tests expect a cluster that `make cluster-up` prepared; they
are selected with the `kind` marker and skipped when the context does not answer.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache

import pytest
import yaml

from rakuten_common.processes import wait_until
from tests.support.servers import REPO

#: NodePorts of the chart's kind scenario and kube-prometheus-stack, published by kind-config.yaml.
MODEL_NODE_PORT, GRAFANA_NODE_PORT = 30080, 30300


def _host_port(node_port: int) -> int:
    """The host port kind-config.yaml publishes ``node_port`` on."""
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    plane = next(n for n in config["nodes"] if n["role"] == "control-plane")
    return next(m["hostPort"] for m in plane["extraPortMappings"] if m["containerPort"] == node_port)


def model_port() -> int:
    return _host_port(MODEL_NODE_PORT)


def grafana_port() -> int:
    return _host_port(GRAFANA_NODE_PORT)


@dataclass(frozen=True)
class Cluster:
    """The cluster under test, as `make e2e` / `make e2e-test` describe it (E2E_ENV)."""

    context: str = field(default_factory=lambda: os.environ.get("KUBE_CONTEXT")
                         or f"kind-{os.environ.get('CLUSTER_NAME', 'rakuten')}")
    namespace: str = field(default_factory=lambda: os.environ.get("NAMESPACE", "rakuten"))
    release: str = field(default_factory=lambda: os.environ.get("RELEASE", "rakuten-serving"))
    monitoring: str = field(default_factory=lambda: os.environ.get("MONITORING_NAMESPACE", "monitoring"))
    model_url: str = field(default_factory=lambda: os.environ.get("MODEL_URL", f"http://127.0.0.1:{model_port()}"))
    grafana_url: str = field(default_factory=lambda: os.environ.get("GRAFANA_URL", f"http://127.0.0.1:{grafana_port()}"))
    train_timeout: float = field(default_factory=lambda: float(os.environ.get("TRAIN_TIMEOUT", "1800")))
    ready_timeout: float = field(default_factory=lambda: float(os.environ.get("READY_TIMEOUT", "900")))

    @property
    def release_selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release}"


@cache
def api_client(context: str):
    """A kubernetes ApiClient for ``context`` of the kubeconfig ($KUBECONFIG, else ~/.kube/config)."""
    from kubernetes import config

    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None, context=context)


def unreachable(cluster: Cluster) -> str | None:
    """Why the cluster cannot be tested (no kubeconfig context, API server silent), or None."""
    try:
        from kubernetes import client

        client.VersionApi(api_client(cluster.context)).get_code(_request_timeout=5)
    except Exception as exc:
        return f"no Kubernetes API for context {cluster.context!r} ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def condition(obj, kind: str) -> bool:
    """Whether ``obj`` (a client model or a dict) has condition ``kind`` with status True."""
    status = obj["status"] if isinstance(obj, dict) else obj.status
    conditions = (status or {}).get("conditions") if isinstance(status, dict) else status.conditions
    for c in conditions or []:
        c_type, c_status = (c["type"], c["status"]) if isinstance(c, dict) else (c.type, c.status)
        if c_type == kind and c_status == "True":
            return True
    return False


def proxy_get(cluster, namespace: str, service: str, path: str, **params) -> dict:
    """GET through the API server's service proxy (no port-forward needed); JSON body."""
    api = api_client(cluster.context)
    method, url, headers, body, post = api.param_serialize(
        "GET", f"/api/v1/namespaces/{namespace}/services/{service}/proxy{path}",
        query_params=list(params.items()), auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers, body=body, post_params=post, _request_timeout=20)
    response.read()
    if not 200 <= response.status < 300:
        raise RuntimeError(f"GET {path} through {service}: HTTP {response.status} {response.data[:300]!r}")
    return json.loads(response.data)


def prometheus(cluster, path: str, **params) -> dict:
    return proxy_get(cluster, cluster.monitoring, "prometheus-operated:9090", path, **params)


def eventually(check, timeout: float, what: str, interval: float = 5):
    """wait_until with the last reason in the failure message."""
    last = {"why": "never checked"}

    def ready() -> bool:
        try:
            why = check()
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
        last["why"] = why
        return why is None

    try:
        return wait_until(ready, timeout, what, interval=interval)
    except TimeoutError as exc:
        pytest.fail(f"{exc}: {last['why']}")
