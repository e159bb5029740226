"""Roll a new champion out to the InferenceService with the ``kubernetes`` client, or roll it back.

The predictor's pods load the version named by their pod-template annotation
``serving.rakuten.io/model-version`` (the chart passes it to the server through the downward
API; without it they load the champion pointer's version). A rollout therefore is:

1. PATCH ``spec.predictor.annotations`` of the InferenceService (JSON merge patch, guarded by
   the ``resourceVersion`` just read). In Knative mode with ``canary_percent`` set, the first
   patch also sets ``canaryTrafficPercent``: the new revision gets that share of the traffic,
   is smoke-tested, then a second patch removes the field (100 %).
2. Wait, bounded by ``rollout_timeout``, until the new pods are Ready and no old one is left
   (``training_job.promotion.kserve_status``); a pod that cannot start fails the rollout at once.
3. A V2 smoke call must answer with the new ``model_version`` (``training_job.promotion.smoke``).

A failed step is reported; ``training_job.promote`` then restores the previous champion
(registry alias and pointer) and calls ``restore`` with the previous annotation. Each outcome is
also a Kubernetes Event on the InferenceService. RBAC needed (namespaced): inferenceservices
get/patch, deployments get, pods list, events create.
"""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rakuten_common.errors import RakutenError
from rakuten_common.options import option
from training_job.promotion import kserve_status, smoke
from training_job.promotion.kserve_status import ANNOTATION, Progress

logger = logging.getLogger("rakuten.rollout")

GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Calls through the main route during a canary step, to meet the canary at least once.
CANARY_CALLS = 30
#: Bound of one call to the API server.
API_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class RolloutConfig:
    inference_service: str = option("", env="INFERENCE_SERVICE", metavar="NAME",
                                    help="after a promotion, roll the new champion out to this InferenceService "
                                         "(in-cluster credentials, else KUBECONFIG); empty: no rollout")
    namespace: str = option("", env="POD_NAMESPACE", shown="the pod's, else the kubeconfig's",
                            help="namespace of the InferenceService")
    rollout_timeout: float = option(600.0, env="ROLLOUT_TIMEOUT_SECONDS", metavar="SECONDS",
                                    help="how long the new predictor pods may take to be Ready")
    canary_percent: int = option(20, env="ROLLOUT_CANARY_PERCENT",
                                 help="Knative mode: traffic share of the new revision during the canary step "
                                      "(0: straight to 100%%)")
    smoke_url: str = option("", env="ROLLOUT_SMOKE_URL", metavar="URL", shown="the InferenceService's address",
                            help="V2 base URL of the predictor for the smoke call")
    smoke_timeout: float = option(120.0, env="ROLLOUT_SMOKE_TIMEOUT_SECONDS", metavar="SECONDS",
                                  help="how long the smoke call may wait for the new model_version")
    poll_seconds: float = option(3.0, env="ROLLOUT_POLL_SECONDS", metavar="SECONDS",
                                 help="seconds between two status reads")


class RolloutError(RakutenError, RuntimeError):
    """The Kubernetes API refused or could not be reached."""


@dataclass
class RolloutResult:
    ok: bool
    version: str | None
    previous: str | None            # the annotation before the change (None: there was none)
    mode: str = "Standard"
    seconds: float = 0.0
    detail: str = ""
    smoke: list[smoke.SmokeResult] = field(default_factory=list)


def api_client(kubeconfig: str | None = None):
    """In-cluster credentials (the training pod's ServiceAccount token), else ``KUBECONFIG``."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=kubeconfig)
        except (config.ConfigException, OSError) as exc:
            raise RolloutError(f"no Kubernetes credentials: not in a pod, and no usable kubeconfig ({exc})") from None
    return client.ApiClient()


def current_namespace(configured: str) -> str:
    if configured:
        return configured
    if NAMESPACE_FILE.is_file():
        return NAMESPACE_FILE.read_text().strip()
    try:
        from kubernetes import config

        return config.list_kube_config_contexts()[1]["context"].get("namespace") or "default"
    except Exception:
        return "default"


class Rollout:
    """One InferenceService, driven through the API server."""

    def __init__(self, config: RolloutConfig, client=None):
        from kubernetes import client as k8s

        self.config = config
        self.name = config.inference_service
        self.namespace = current_namespace(config.namespace)
        api = client or api_client()
        self.custom, self.apps, self.core = k8s.CustomObjectsApi(api), k8s.AppsV1Api(api), k8s.CoreV1Api(api)

    # -- API calls -----------------------------------------------------------------------------------
    def _api(self, what: str, function, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return function(*args, _request_timeout=API_TIMEOUT_SECONDS, **kwargs)
        except ApiException as exc:
            raise RolloutError(f"{what} {self.namespace}/{self.name}: HTTP {exc.status} {exc.reason}") from None
        except HTTPError as exc:
            raise RolloutError(f"{what} {self.namespace}/{self.name}: {exc}") from None

    def read(self) -> dict:
        return self._api("get inferenceservice", self.custom.get_namespaced_custom_object,
                         GROUP, API_VERSION, self.namespace, PLURAL, self.name)

    def _patch(self, isvc: dict, predictor: dict) -> dict:
        body = {"metadata": {"resourceVersion": isvc["metadata"]["resourceVersion"]}, "spec": {"predictor": predictor}}
        return self._api("patch inferenceservice", self.custom.patch_namespaced_custom_object,
                         GROUP, API_VERSION, self.namespace, PLURAL, self.name, body)

    def _deployment(self) -> dict | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            found = self.apps.read_namespaced_deployment(f"{self.name}-predictor", self.namespace,
                                                         _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status == 404:  # KServe has not created it yet
                return None
            raise RolloutError(f"get deployment {self.namespace}/{self.name}-predictor: "
                               f"HTTP {exc.status} {exc.reason}") from None
        except HTTPError as exc:
            raise RolloutError(f"get deployment {self.namespace}/{self.name}-predictor: {exc}") from None
        return self.apps.api_client.sanitize_for_serialization(found)

    def _pods(self) -> list[dict]:
        found = self._api("list pods", self.core.list_namespaced_pod, self.namespace,
                          label_selector=f"serving.kserve.io/inferenceservice={self.name}")
        return self.core.api_client.sanitize_for_serialization(found).get("items", [])

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        """A Kubernetes Event on the InferenceService (``kubectl describe`` shows it); never fatal."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            isvc = self.read()
            body = {"metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
                    "involvedObject": {"apiVersion": f"{GROUP}/{API_VERSION}", "kind": "InferenceService",
                                       "name": self.name, "namespace": self.namespace,
                                       "uid": isvc["metadata"].get("uid"),
                                       "resourceVersion": isvc["metadata"].get("resourceVersion")},
                    "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
                    "source": {"component": "rakuten-promote", "host": socket.gethostname()},
                    "reportingComponent": "rakuten-serving/promote", "reportingInstance": socket.gethostname(),
                    "firstTimestamp": now, "lastTimestamp": now, "count": 1}
            self._api("create event", self.core.create_namespaced_event, self.namespace, body)
            logger.info("Event %s on inferenceservice %s/%s: %s", reason, self.namespace, self.name, message)
        except RolloutError as exc:
            logger.warning("could not record Event %s: %s", reason, exc)

    # -- waiting -------------------------------------------------------------------------------------
    def _wait(self, check, what: str) -> Progress:
        deadline, last = time.monotonic() + self.config.rollout_timeout, None
        while True:
            progress = check()
            if progress.done or progress.failed:
                return progress
            if progress.waiting != last:
                logger.info("  %s: %s", what, progress.waiting)
                last = progress.waiting
            if time.monotonic() >= deadline:
                return Progress(failed=f"not Ready after {self.config.rollout_timeout:.0f} s: {progress.waiting}")
            time.sleep(self.config.poll_seconds)

    def _standard_done(self, expected: str | None) -> Progress:
        progress = kserve_status.standard_progress(self._deployment(), expected, self._pods())
        if progress.done:
            ready, why = kserve_status.isvc_ready(self.read())
            if not ready:
                return Progress(waiting=f"pods rolled out; InferenceService {why}")
        return progress

    def _smoke_url(self, isvc: dict) -> str:
        return (self.config.smoke_url or kserve_status.predictor_url(isvc)
                or f"http://{self.name}-predictor.{self.namespace}.svc.cluster.local")

    # -- the steps -----------------------------------------------------------------------------------
    def _change(self, value: str | None, expected_version: str, canary: bool) -> RolloutResult:
        """Set the annotation to ``value`` (``None`` removes it); the pods must then answer ``expected_version``."""
        started = time.monotonic()
        isvc = self.read()
        mode, previous = kserve_status.deployment_mode(isvc), kserve_status.pinned_version(isvc)
        result = RolloutResult(False, value, previous, mode)
        revision = kserve_status.latest_revision(isvc)
        percent = self.config.canary_percent if canary and mode == "Knative" and 0 < self.config.canary_percent < 100 \
            else 100
        logger.info("Rolling %s/%s (%s mode) to %s=%s%s", self.namespace, self.name, mode, ANNOTATION, value,
                    f", canary {percent}%" if percent < 100 else "")
        try:
            return self._steps(isvc, result, revision, percent, value, expected_version, started)
        except RolloutError as exc:  # the API failed half-way: a failed rollout, to be rolled back
            return self._finish(result, started, str(exc))

    def _steps(self, isvc: dict, result: RolloutResult, revision: str | None, percent: int, value: str | None,
               expected_version: str, started: float) -> RolloutResult:
        mode, previous = result.mode, result.previous
        change: dict[str, object] = {"annotations": {ANNOTATION: value}}
        if mode == "Knative":
            change["canaryTrafficPercent"] = percent if percent < 100 else None
        canary_set = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent") is not None
        if previous != value or percent < 100 or (mode == "Knative" and canary_set):
            self._patch(isvc, change)
        else:  # already so (e.g. restoring after a refused patch): only check it is Ready and answers
            revision = None
        if mode == "Knative":
            progress = self._wait(lambda: kserve_status.knative_progress(self.read(), revision, percent),
                                  "new revision")
        else:
            progress = self._wait(lambda: self._standard_done(value), "predictor pods")
        if progress.failed:
            return self._finish(result, started, progress.failed)
        if percent < 100:
            problem = self._canary(expected_version, percent, result)
            if problem:
                return self._finish(result, started, problem)
        check = smoke.expect_version(self._smoke_url(self.read()), expected_version, self.config.smoke_timeout)
        result.smoke.append(check)
        if not check.ok:
            return self._finish(result, started, f"smoke call: {check.detail}")
        result.ok = True
        return self._finish(result, started, f"serving model_version {expected_version} ({check.detail})")

    def _canary(self, expected_version: str, percent: int, result: RolloutResult) -> str | None:
        """Smoke the canary revision, then give it all the traffic; why not, if it failed."""
        isvc = self.read()
        tagged = kserve_status.canary_url(isvc)
        check = (smoke.expect_version(tagged, expected_version, self.config.smoke_timeout) if tagged
                 else smoke.expect_some(self._smoke_url(isvc), expected_version, CANARY_CALLS))
        result.smoke.append(check)
        if not check.ok:
            return f"canary smoke call: {check.detail}"
        logger.info("  canary at %d%% answers %s: giving it all the traffic", percent, expected_version)
        revision = kserve_status.latest_revision(isvc)
        self._patch(isvc, {"canaryTrafficPercent": None})

        def full_traffic() -> Progress:
            current = self.read()
            if kserve_status.latest_revision(current) != revision:
                return Progress(failed=f"another revision ({kserve_status.latest_revision(current)}) "
                                       f"replaced the canary {revision}")
            return kserve_status.knative_progress(current, None, 100)

        progress = self._wait(full_traffic, "full traffic")
        return progress.failed

    @staticmethod
    def _finish(result: RolloutResult, started: float, detail: str) -> RolloutResult:
        result.seconds, result.detail = time.monotonic() - started, detail
        log = logger.info if result.ok else logger.error
        log("Rollout %s after %.1f s: %s", "done" if result.ok else "FAILED", result.seconds, detail)
        return result

    def apply(self, version: str) -> RolloutResult:
        """Serve ``version`` (a model version id): patch, wait until Ready, smoke call."""
        return self._change(version, version, canary=True)

    def restore(self, previous: str | None, expected_version: str) -> RolloutResult:
        """Put the annotation back as it was (``None``: remove it) and check ``expected_version`` answers."""
        return self._change(previous, expected_version, canary=False)
