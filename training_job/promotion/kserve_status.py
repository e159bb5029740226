"""How far a predictor rollout has got, read from the objects KServe and Kubernetes report.

Pure functions over the JSON objects (as the API server returns them), so the rules are stated
once and tested without a cluster:

- **Standard mode** (a Deployment ``<isvc>-predictor``): KServe's ``PredictorReady`` follows
  the Deployment's ``Available``/``Progressing`` conditions and its ``observedGeneration`` is
  the Deployment's, so neither says *which* pod template is live. The rollout is done when the
  Deployment's template carries the new annotation and, like ``kubectl rollout status``, its
  status has observed that generation with every replica updated and available and no old
  replica left. It failed when the Deployment reports ``ProgressDeadlineExceeded`` or a new pod
  cannot start (crash loop, image or config error).
- **Knative mode**: a new revision appears in ``status.components.predictor``; done when it is
  the latest ready one and carries the expected share of the traffic; failed when KServe reports
  the predictor's configuration or readiness ``False``. A canary share is only ever given when a
  revision has been rolled out before (``rolled_out_revision``).
"""
from __future__ import annotations

from dataclasses import dataclass

#: Pod-template annotation on the predictor naming the model version its pods serve.
ANNOTATION = "serving.rakuten.io/model-version"
#: Container states that will not heal by waiting.
FATAL_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                           "CreateContainerError", "InvalidImageName", "RunContainerError"})


@dataclass(frozen=True)
class Progress:
    done: bool = False
    failed: str | None = None
    waiting: str = ""


def _get(obj: dict | None, *path, default=None):
    for key in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
    return default if obj is None else obj


def condition(obj: dict, kind: str) -> dict | None:
    return next((c for c in _get(obj, "status", "conditions", default=[]) if c.get("type") == kind), None)


def deployment_mode(isvc: dict) -> str:
    """``Knative`` or ``Standard`` (KServe's old names Serverless/RawDeployment accepted)."""
    mode = (_get(isvc, "metadata", "annotations", default={}).get("serving.kserve.io/deploymentMode")
            or _get(isvc, "status", "deploymentMode") or "Standard")
    return "Knative" if mode in ("Knative", "Serverless") else "Standard"


def pinned_version(isvc: dict) -> str | None:
    return _get(isvc, "spec", "predictor", "annotations", default={}).get(ANNOTATION)


def isvc_ready(isvc: dict) -> tuple[bool, str]:
    ready = condition(isvc, "Ready")
    if ready is None:
        return False, "no Ready condition yet"
    return ready.get("status") == "True", f"Ready={ready.get('status')} {ready.get('reason') or ''}".strip()


def pod_failure(pods: list[dict], expected: str | None) -> str | None:
    """Why a pod of the new template cannot start, if one cannot."""
    for pod in pods:
        if _get(pod, "metadata", "annotations", default={}).get(ANNOTATION) != expected:
            continue
        statuses = _get(pod, "status", "initContainerStatuses", default=[]) + \
            _get(pod, "status", "containerStatuses", default=[])
        for status in statuses:
            waiting = _get(status, "state", "waiting", default={})
            if waiting.get("reason") in FATAL_WAITING:
                return (f"pod {_get(pod, 'metadata', 'name')} container {status.get('name')}: "
                        f"{waiting['reason']} {waiting.get('message', '')}".strip())
    return None


def standard_progress(deployment: dict | None, expected: str | None, pods: list[dict]) -> Progress:
    if deployment is None:
        return Progress(waiting="the predictor Deployment does not exist yet")
    template = _get(deployment, "spec", "template", "metadata", "annotations", default={}).get(ANNOTATION)
    if template != expected:
        return Progress(waiting=f"KServe has not yet put {ANNOTATION}={expected} on the Deployment")
    failure = pod_failure(pods, expected)
    if failure:
        return Progress(failed=failure)
    progressing = condition(deployment, "Progressing")
    if progressing and progressing.get("status") == "False":
        return Progress(failed=f"Deployment {progressing.get('reason')}: {progressing.get('message', '')}")
    wanted = _get(deployment, "spec", "replicas", default=1)
    status = deployment.get("status") or {}
    observed = status.get("observedGeneration", 0) >= _get(deployment, "metadata", "generation", default=0)
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    old = status.get("replicas", 0) - updated
    if observed and updated >= wanted and available >= wanted and old <= 0:
        return Progress(done=True, waiting=f"{updated}/{wanted} replicas updated and available")
    return Progress(waiting=f"{updated}/{wanted} replicas updated, {available} available, {max(old, 0)} old")


def knative_progress(isvc: dict, previous_revision: str | None, percent: int) -> Progress:
    predictor = _get(isvc, "status", "components", "predictor", default={})
    created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    for kind in ("PredictorConfigurationReady", "PredictorReady"):
        found = condition(isvc, kind)
        if found and found.get("status") == "False" and created and created != previous_revision:
            return Progress(failed=f"{kind}=False {found.get('reason', '')}: {found.get('message', '')}")
    if not created or created == previous_revision:
        return Progress(waiting="no new revision yet")
    if ready != created:
        return Progress(waiting=f"revision {created} not ready yet")
    share = sum(t.get("percent") or 0 for t in predictor.get("traffic", []) if t.get("revisionName") == created)
    if share != percent:
        return Progress(waiting=f"revision {created} has {share}% of the traffic, waiting for {percent}%")
    ok, why = isvc_ready(isvc)
    return Progress(done=ok, waiting=f"revision {created} at {share}%; {why}")


def latest_revision(isvc: dict) -> str | None:
    return _get(isvc, "status", "components", "predictor", "latestCreatedRevision")


def rolled_out_revision(isvc: dict) -> str | None:
    """The last revision that carried all the traffic once ready. KServe splits the traffic for
    ``canaryTrafficPercent`` only when there is one (``ksvc_reconciler.go``); without it (a first
    install) the latest revision gets 100 % whatever the percent says."""
    return _get(isvc, "status", "components", "predictor", "latestRolledoutRevision") or None


def predictor_url(isvc: dict) -> str | None:
    """The in-cluster address of the predictor as KServe reports it."""
    return (_get(isvc, "status", "components", "predictor", "address", "url")
            or _get(isvc, "status", "address", "url") or _get(isvc, "status", "url"))


def canary_url(isvc: dict) -> str | None:
    """The tagged URL of the latest revision (Knative tag routing), when KServe reports one."""
    for entry in _get(isvc, "status", "components", "predictor", "traffic", default=[]):
        if entry.get("tag") == "latest" and entry.get("url"):
            return entry["url"]
    return None
