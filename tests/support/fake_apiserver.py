"""A minimal Kubernetes API server for `helm template --dry-run=server`: discovery (which kinds
the cluster serves) and GETs of the objects a test puts in it, over plain HTTP on 127.0.0.1.

Mocked because no Kubernetes API server can run on this machine; it answers only what Helm asks
while rendering (version, discovery, the chart's `lookup`s), so the chart's live-cluster checks
run for real against it. Everything else is 404.
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: group/version -> [(plural, Kind, namespaced)]
CORE = {"v1": [("namespaces", "Namespace", False), ("secrets", "Secret", True), ("services", "Service", True),
               ("configmaps", "ConfigMap", True), ("serviceaccounts", "ServiceAccount", True),
               ("persistentvolumeclaims", "PersistentVolumeClaim", True), ("pods", "Pod", True)],
        "apps/v1": [("deployments", "Deployment", True)],
        "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
        "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
        "rbac.authorization.k8s.io/v1": [("roles", "Role", True), ("rolebindings", "RoleBinding", True)]}
KSERVE = {"serving.kserve.io/v1beta1": [("inferenceservices", "InferenceService", True)]}
PROMETHEUS_OPERATOR = {"monitoring.coreos.com/v1": [("podmonitors", "PodMonitor", True),
                                                     ("prometheusrules", "PrometheusRule", True)]}


@dataclass
class Cluster:
    """What the fake API server serves: kinds by group/version, and objects by API path."""

    kinds: dict[str, list[tuple[str, str, bool]]] = field(default_factory=lambda: dict(CORE))
    objects: dict[str, dict] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}})

    def add(self, obj: dict) -> None:
        meta = obj["metadata"]
        plural = {"Namespace": "namespaces", "Secret": "secrets"}[obj["kind"]]
        path = f"/api/v1/namespaces/{meta['namespace']}/{plural}/{meta['name']}" if "namespace" in meta \
            else f"/api/v1/{plural}/{meta['name']}"
        self.objects[path] = obj

    def answer(self, path: str) -> tuple[int, dict]:
        self.requests.append(path)
        path = path.split("?")[0].rstrip("/") or "/"
        if path == "/version":
            return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0", "gitCommit": "0" * 40,
                         "gitTreeState": "clean", "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24",
                         "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = {}
            for gv in self.kinds:
                if "/" in gv:
                    group, version = gv.split("/")
                    groups.setdefault(group, []).append({"groupVersion": gv, "version": version})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": v, "preferredVersion": v[0]} for g, v in groups.items()]}
        gv = path.removeprefix("/api/").removeprefix("/apis/")
        if gv in self.kinds:
            return 200, {"kind": "APIResourceList", "groupVersion": gv, "resources": [
                {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                 "verbs": ["get", "list", "create", "update", "patch", "delete"]}
                for plural, kind, namespaced in self.kinds[gv]]}
        if path in self.objects:
            return 200, self.objects[path]
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                     "message": f"{path} not found"}


@contextmanager
def serving(cluster: Cluster, directory: Path):
    """Serve ``cluster`` on a free 127.0.0.1 port; yields a kubeconfig path pointing at it."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            code, body = cluster.answer(self.path)
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    try:
        yield kubeconfig
    finally:
        server.shutdown()
