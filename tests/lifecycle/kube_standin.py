"""A stand-in for the Kubernetes API server and the KServe controller, for the rollout tests.

No Kubernetes API server can run on the machines this project is built on, so the rollout is
driven, through the real ``kubernetes`` client, against this HTTP server that speaks the real
paths and object shapes it uses:

- ``GET``/``PATCH /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}``
  (JSON merge patch only, ``resourceVersion`` checked: 409 Conflict, as the API server does);
- ``GET /apis/apps/v1/namespaces/{ns}/deployments/{name}-predictor``;
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=...``; ``POST /api/v1/namespaces/{ns}/events``.

Behind it a small controller plays KServe + the Deployment controller: when the predictor's
pod-template annotation changes it starts a "pod" — a **real model server process** whose
``--model_uri`` is ``<prefix>/<annotation>``, as the chart builds it through the downward API —
waits for its readiness, puts it behind the Service (a proxy on 127.0.0.1) and only then takes
the old pod out and stops it (maxUnavailable 0, readiness gating). Status conditions follow as
KServe reports them. ``behaviour`` makes a rollout fail the two ways the tests need:
``never_ready`` (the new pod never passes readiness) and ``stale`` (the status says rolled out
but the old pod keeps answering). ``knative=True`` reports revisions and splits the traffic by
``canaryTrafficPercent`` instead.
"""
from __future__ import annotations

import copy
import itertools
import json
import random
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from rakuten_common.processes import ServerProcess, free_port
from tests.support.servers import start_model_server

ANNOTATION = "serving.rakuten.io/model-version"


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Proxy:
    """The predictor Service: forwards each request to one ready endpoint (weighted), like kube-proxy."""

    def __init__(self):
        self.routes: list[tuple[str, int]] = []   # (backend base URL, weight)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                with proxy.lock:
                    routes = list(proxy.routes)
                if not routes:
                    self.send_error(503, "no ready endpoint")
                    return
                backend = random.choices([r for r, _ in routes], weights=[w for _, w in routes])[0]
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) if method == "POST" else None
                request = urllib.request.Request(backend + self.path, data=body, method=method,
                                                 headers={"Content-Type": self.headers.get("Content-Type", "")})
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        status, payload = answer.status, answer.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                except OSError as exc:
                    self.send_error(502, f"endpoint {backend}: {exc}")
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, routes: list[tuple[str, int]]) -> None:
        with self.lock:
            self.routes = [(url, weight) for url, weight in routes if weight > 0]


class Pod:
    def __init__(self, name: str, version: str | None, server: ServerProcess | None, url: str | None):
        self.name, self.version, self.server, self.url = name, version, server, url

    def as_object(self, ready: bool, waiting: str | None = None) -> dict:
        status = {"name": "kserve-container", "ready": ready, "restartCount": 0, "image": "model-server",
                  "imageID": "", "state": {"waiting": {"reason": waiting}} if waiting else {"running": {}}}
        return {"metadata": {"name": self.name, "labels": {"serving.kserve.io/inferenceservice": "rakuten"},
                             "annotations": {ANNOTATION: self.version} if self.version else {}},
                "status": {"phase": "Running", "containerStatuses": [status]}}


class StandInCluster:
    """API server + controller for one InferenceService ``rakuten`` in namespace ``rakuten``."""

    name = namespace = "rakuten"

    def __init__(self, model_prefix: str, env: dict[str, str], logs: Path, knative: bool = False):
        self.prefix, self.env, self.logs, self.knative = model_prefix.rstrip("/"), env, logs, knative
        self.behaviour = "rolling"
        self.proxy = Proxy()
        self.lock = threading.RLock()
        self.events: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.pods: list[Pod] = []
        self.not_ready: list[Pod] = []
        self.revisions = itertools.count(1)
        self.isvc = {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": "0b7c1e9e-standin", "generation": 1,
                         "resourceVersion": "1",
                         "annotations": {"serving.kserve.io/deploymentMode": "Knative" if knative else "Standard"}},
            "spec": {"predictor": {"minReplicas": 1, "containers": [{"name": "kserve-container"}]}},
            "status": {"address": {"url": self.proxy.url}, "conditions": [{"type": "Ready", "status": "True"}],
                       "components": {"predictor": {}}},
        }
        self.deployment = {"metadata": {"name": f"{self.name}-predictor", "generation": 1},
                           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": f"isvc.{self.name}-predictor"}},
                                    "template": {"metadata": {"annotations": {}},
                                                 "spec": {"containers": [{"name": "kserve-container"}]}}},
                           "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                                      "availableReplicas": 1,
                                      "conditions": [{"type": "Progressing", "status": "True",
                                                      "reason": "NewReplicaSetAvailable"}]}}
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # -- pods ----------------------------------------------------------------------------------------
    def start_pod(self, version: str | None) -> Pod:
        """A model server loading ``<prefix>/<version>`` (the champion pointer when unpinned)."""
        name = f"{self.name}-predictor-{next(self.revisions):05d}"
        server, url = start_model_server(f"{self.prefix}/{version or ''}", self.logs / f"{name}.log", env=self.env,
                                         extra_args=["--enable_grpc=false"], timeout=600)
        return Pod(name, version, server, url)

    def first_pod(self) -> Pod:
        pod = self.start_pod(None)
        self.pods = [pod]
        self.proxy.set([(pod.url, 100)])
        if self.knative:
            self._knative_status(f"{self.name}-predictor-00001", [(f"{self.name}-predictor-00001", 100, None)])
        return pod

    def stop(self) -> None:
        self.server.shutdown()
        self.proxy.server.shutdown()
        for pod in self.pods:
            if pod.server:
                pod.server.stop()

    # -- the controller ------------------------------------------------------------------------------
    def _set_condition(self, obj: dict, kind: str, status: str, reason: str = "") -> None:
        conditions = [c for c in obj["status"].setdefault("conditions", []) if c["type"] != kind]
        obj["status"]["conditions"] = conditions + [{"type": kind, "status": status, "reason": reason}]

    def _bump(self) -> None:
        self.isvc["metadata"]["resourceVersion"] = str(int(self.isvc["metadata"]["resourceVersion"]) + 1)

    def _spec_changed(self) -> None:
        version = (self.isvc["spec"]["predictor"].get("annotations") or {}).get(ANNOTATION)
        threading.Thread(target=self._knative_rollout if self.knative else self._standard_rollout,
                         args=(version,), daemon=True).start()

    def _standard_rollout(self, version: str | None) -> None:
        time.sleep(0.5)  # the controller's reaction time
        with self.lock:
            d = self.deployment
            d["metadata"]["generation"] += 1
            d["spec"]["template"]["metadata"]["annotations"] = {ANNOTATION: version} if version else {}
            d["status"].update(observedGeneration=d["metadata"]["generation"], updatedReplicas=0)
            self._set_condition(d, "Progressing", "True", "ReplicaSetUpdated")
            self._set_condition(self.isvc, "Ready", "Unknown", "ReplicaSetUpdated")
            self._bump()
            live = self.pods[0]
        if version == live.version or self.behaviour == "stale":  # the old ReplicaSet again / a stale status
            self._standard_done()
            return
        if self.behaviour == "never_ready":
            pending = Pod(f"{self.name}-predictor-stuck", version, None, None)
            with self.lock:
                self.not_ready.append(pending)
                self.deployment["status"].update(replicas=2, updatedReplicas=1, availableReplicas=1)
            return
        pod = self.start_pod(version)              # surge: the new pod first, Ready before it gets traffic
        self.proxy.set([(live.url, 100), (pod.url, 100)])
        time.sleep(0.5)
        self.proxy.set([(pod.url, 100)])           # then the old one leaves the endpoints...
        with self.lock:
            self.pods = [pod]
        time.sleep(1.0)                            # ...and is stopped once requests in flight are done
        live.server.stop()
        self._standard_done()

    def _standard_done(self) -> None:
        with self.lock:
            self.not_ready.clear()
            self.deployment["status"].update(replicas=1, updatedReplicas=1, availableReplicas=1)
            self._set_condition(self.deployment, "Progressing", "True", "NewReplicaSetAvailable")
            self._set_condition(self.isvc, "Ready", "True")
            self._bump()

    def _knative_status(self, created: str, traffic: list[tuple[str, int, str | None]]) -> None:
        with self.lock:
            self.isvc["status"]["components"]["predictor"] = {
                "latestCreatedRevision": created, "latestReadyRevision": created,
                "traffic": [{"revisionName": r, "percent": p, **({"tag": t} if t else {})} for r, p, t in traffic]}
            self._set_condition(self.isvc, "Ready", "True")
            self._bump()

    def _knative_rollout(self, version: str | None) -> None:
        time.sleep(0.5)
        with self.lock:
            percent = self.isvc["spec"]["predictor"].get("canaryTrafficPercent")
            live = self.pods[-1]
            current = self.isvc["status"]["components"]["predictor"]["latestCreatedRevision"]
        if version == live.version and len(self.pods) == 2:  # the canary promoted to 100 %
            self.proxy.set([(live.url, 100)])
            old = self.pods[0]
            with self.lock:
                self.pods = [live]
            old.server.stop()
            self._knative_status(current, [(current, 100, "latest")])
            return
        revision = f"{self.name}-predictor-{next(self.revisions):05d}"
        pod = self.start_pod(version)
        share = percent if percent is not None else 100
        with self.lock:
            self.pods = [live, pod] if share < 100 else [pod]
        self.proxy.set([(live.url, 100 - share), (pod.url, share)])
        self._knative_status(revision, [(revision, share, "latest")] + ([(current, 100 - share, "prev")]
                                                                         if share < 100 else []))
        if share == 100:
            live.server.stop()

    # -- the API server ------------------------------------------------------------------------------
    def _handler(self):
        cluster = self
        isvc_path = f"/apis/serving.kserve.io/v1beta1/namespaces/{self.namespace}/inferenceservices/{self.name}"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                  "message": message, "code": code})

            def do_GET(self):
                url = urlparse(self.path)
                cluster.requests.append(("GET", url.path))
                with cluster.lock:
                    if url.path == isvc_path:
                        return self._send(200, cluster.isvc)
                    if url.path == f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments/{cluster.name}-predictor":
                        return self._send(200, {"apiVersion": "apps/v1", "kind": "Deployment", **cluster.deployment})
                    if url.path == f"/api/v1/namespaces/{cluster.namespace}/pods":
                        selector = parse_qs(url.query).get("labelSelector", [""])[0]
                        assert selector == f"serving.kserve.io/inferenceservice={cluster.name}", selector
                        items = [p.as_object(True) for p in cluster.pods] + \
                                [p.as_object(False) for p in cluster.not_ready]
                        return self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
                self._status(404, "NotFound", f"{url.path} not found")

            def do_PATCH(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                cluster.requests.append(("PATCH", self.path))
                if self.path != isvc_path:
                    return self._status(404, "NotFound", f"{self.path} not found")
                if self.headers.get("Content-Type") != "application/merge-patch+json":
                    return self._status(415, "UnsupportedMediaType", self.headers.get("Content-Type", ""))
                with cluster.lock:
                    wanted = (body.get("metadata") or {}).get("resourceVersion")
                    if wanted and wanted != cluster.isvc["metadata"]["resourceVersion"]:
                        return self._status(409, "Conflict", "the object has been modified")
                    before = copy.deepcopy(cluster.isvc["spec"])
                    cluster.isvc = merge_patch(cluster.isvc, {k: v for k, v in body.items() if k != "status"})
                    cluster._bump()
                    if cluster.isvc["spec"] != before:
                        cluster.isvc["metadata"]["generation"] += 1
                        cluster._spec_changed()
                    self._send(200, cluster.isvc)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                cluster.requests.append(("POST", self.path))
                if self.path != f"/api/v1/namespaces/{cluster.namespace}/events":
                    return self._status(404, "NotFound", f"{self.path} not found")
                with cluster.lock:
                    body["metadata"]["name"] = f"{cluster.name}.{len(cluster.events):08x}"
                    cluster.events.append(body)
                self._send(201, body)

        return Handler

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "promote", "user": {"token": "standin-token"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "promote",
                                                         "namespace": self.namespace}}]}))
        return path
