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
but the old pod keeps answering). ``knative=True`` plays KServe's Knative reconciler instead
(``ksvc_reconciler.go``): a new revision per template change; the traffic split by
``canaryTrafficPercent`` only once a revision has been rolled out (ready with 100 %; its
``latestRolledoutRevision``), else 100 % to the latest ready revision; ``canaryTrafficPercent: 0``
sends all of it to the rolled-out revision. ``conflicts`` answers that many matching PATCHes
409 Conflict after a write of its own (a status update landing in between); ``Proxy.cold``
makes a backend answer only after a cold start (a revision scaled to zero).
"""
from __future__ import annotations

import copy
import itertools
import json
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
    """The predictor Service: forwards each request to one ready endpoint, like kube-proxy or Knative's
    gateway. The weights are served in smooth weighted round-robin (deterministic: 80/20 sends
    the first call to the 80 and one call in five to the 20). A backend in ``cold`` (URL ->
    seconds) is scaled to zero: the first request starts its cold start, and every request waits
    until it is over (as Knative's activator holds them), whether or not its client still waits."""

    #: Request headers passed on to the backend.
    FORWARDED = ("Content-Type", "Authorization", "X-API-Key")

    def __init__(self):
        self.routes: list[tuple[str, int]] = []   # (backend base URL, weight)
        self.current: list[int] = []
        self.cold: dict[str, float] = {}
        self.warm_at: dict[str, float] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                backend, wait = proxy.pick()
                if backend is None:
                    self.send_error(503, "no ready endpoint")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) if method == "POST" else None
                time.sleep(wait)
                request = urllib.request.Request(backend + self.path, data=body, method=method,
                                                 headers={k: self.headers[k] for k in proxy.FORWARDED
                                                          if self.headers.get(k)})
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
            self.current = [0] * len(self.routes)

    def pick(self) -> tuple[str | None, float]:
        """The next backend (smooth weighted round-robin) and how long its cold start still lasts."""
        with self.lock:
            if not self.routes:
                return None, 0.0
            total = sum(weight for _, weight in self.routes)
            self.current = [c + weight for c, (_, weight) in zip(self.current, self.routes)]
            chosen = max(range(len(self.routes)), key=self.current.__getitem__)
            self.current[chosen] -= total
            backend = self.routes[chosen][0]
            if backend in self.cold:
                warm_at = self.warm_at.setdefault(backend, time.monotonic() + self.cold[backend])
                return backend, max(0.0, warm_at - time.monotonic())
            return backend, 0.0


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
        self.reconciling = threading.Lock()    # one reconcile at a time, each on the spec it finds
        self.events: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.patches: list[tuple[dict, int]] = []   # (body, HTTP status answered)
        self.conflicts, self.conflict_when = 0, (lambda body: True)
        self.pods: list[Pod] = []
        self.not_ready: list[Pod] = []
        self.revisions = itertools.count(1)
        # Knative: revision name -> (pinned version, its pod or None while not ready)
        self.revision_pods: dict[str, tuple[str | None, Pod | None]] = {}
        self.latest_created = self.latest_ready = self.rolled_out = None
        self.traffic: list[tuple[str, int, str | None]] = []
        self.traffic_log: list[dict[str, int]] = []   # every split Knative was given, in order
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
    def start_pod(self, version: str | None, name: str | None = None) -> Pod:
        """A model server loading ``<prefix>/<version>`` (the champion pointer when unpinned)."""
        name = name or f"{self.name}-predictor-{next(self.revisions):05d}"
        server, url = start_model_server(f"{self.prefix}/{version or ''}", self.logs / f"{name}.log", env=self.env,
                                         extra_args=["--enable_grpc=false"], timeout=600)
        return Pod(name, version, server, url)

    def first_pod(self) -> Pod:
        pod = self.start_pod(None)
        self.pods = [pod]
        self.proxy.set([(pod.url, 100)])
        if self.knative:
            with self.lock:
                self.revision_pods[pod.name] = (None, pod)
                self.latest_created = self.latest_ready = pod.name
                self._knative_route()
        return pod

    def unready_first_revision(self) -> None:
        """Knative, a fresh install: the first revision exists but never got ready (no model to load
        yet), so nothing has been rolled out and the route has no target."""
        assert self.knative
        name = f"{self.name}-predictor-{next(self.revisions):05d}"
        with self.lock:
            self.revision_pods[name] = (None, None)
            self.latest_created = name
            self._knative_route()
            self._set_condition(self.isvc, "Ready", "False", "RevisionMissing")

    def stop(self) -> None:
        self.server.shutdown()
        self.proxy.server.shutdown()
        pods = {id(p): p for p in self.pods + [p for _, p in self.revision_pods.values() if p]}
        for pod in pods.values():
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

    def _knative_route(self) -> None:
        """KServe's traffic for the current spec, as Knative resolves it; the status it reports."""
        percent = self.isvc["spec"]["predictor"].get("canaryTrafficPercent")
        if percent is not None and self.rolled_out and self.latest_ready:  # a canary split
            traffic = [(self.latest_ready, percent, "latest"), (self.rolled_out, 100 - percent, "prev")]
        elif self.latest_ready:                 # latestRevision: true, 100 %: the latest *ready* revision
            traffic = [(self.latest_ready, 100, "latest")]
        else:
            traffic = []
        shares: dict[str, int] = {}
        for revision, share, _ in traffic:
            shares[revision] = shares.get(revision, 0) + share
        if self.latest_ready and shares.get(self.latest_ready) == 100:
            self.rolled_out = self.latest_ready
        self.traffic = traffic
        self.traffic_log.append(shares)
        self.proxy.set([(self.revision_pods[r][1].url, share) for r, share in shares.items()])
        for revision, (version, pod) in list(self.revision_pods.items()):  # idle revisions scale to zero
            if pod and revision not in shares and revision not in (self.latest_ready, self.latest_created):
                self.revision_pods[revision] = (version, None)
                threading.Timer(1.0, pod.server.stop).start()  # once requests in flight are done
        self.pods = [pod for _, pod in self.revision_pods.values() if pod]
        self.isvc["status"]["components"]["predictor"] = {
            "latestCreatedRevision": self.latest_created, "latestReadyRevision": self.latest_ready,
            **({"latestRolledoutRevision": self.rolled_out} if self.rolled_out else {}),
            "traffic": [{"revisionName": r, "percent": p, **({"tag": t} if t else {})} for r, p, t in traffic]}
        if self.latest_ready:
            self._set_condition(self.isvc, "Ready", "True")
        self._bump()

    def _knative_rollout(self, version: str | None) -> None:
        with self.reconciling:
            time.sleep(0.5)
            with self.lock:
                version = (self.isvc["spec"]["predictor"].get("annotations") or {}).get(ANNOTATION)
                changed = self.revision_pods[self.latest_created][0] != version
                if changed:  # a new template: a new revision, not ready yet
                    name = f"{self.name}-predictor-{next(self.revisions):05d}"
                    self.revision_pods[name] = (version, None)
                    self.latest_created = name
                    self._knative_route()
                    rolled_version = self.revision_pods[self.rolled_out][0] if self.rolled_out else None
            if changed:
                if self.behaviour == "never_ready":
                    return
                pod = self.start_pod(rolled_version if self.behaviour == "stale" else version, name)
                with self.lock:
                    self.revision_pods[name] = (version, pod)
                    if self.latest_created == name:
                        self.latest_ready = name
            with self.lock:
                self._knative_route()

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
                    if cluster.conflicts and cluster.conflict_when(body):
                        cluster.conflicts -= 1
                        cluster._bump()  # a write of someone else's lands first
                    wanted = (body.get("metadata") or {}).get("resourceVersion")
                    if wanted and wanted != cluster.isvc["metadata"]["resourceVersion"]:
                        cluster.patches.append((body, 409))
                        return self._status(409, "Conflict", "the object has been modified")
                    cluster.patches.append((body, 200))
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
