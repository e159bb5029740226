"""What the cluster tests address and how they wait: settings from the environment (the make
targets pass theirs), the kubernetes client for the kind context, bounded polling.

Like KServe's own test/e2e, these tests expect a cluster that `make cluster-up` prepared; they
are selected with the `kind` marker and skipped when the context does not answer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache

import yaml

from tests.servers import REPO


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
    """A kubernetes ApiClient for ``context`` of the default kubeconfig."""
    from kubernetes import config

    return config.new_client_from_config(context=context)


def unreachable(cluster: Cluster) -> str | None:
    """Why the cluster cannot be tested (no kubeconfig context, API server silent), or None."""
    try:
        from kubernetes import client

        client.VersionApi(api_client(cluster.context)).get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means: no cluster to test
        return f"no Kubernetes API for context {cluster.context!r} ({type(exc).__name__}: {str(exc)[:200]})"
    return None
