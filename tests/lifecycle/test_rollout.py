"""Rollouts driven by ``python -m training_job.promote`` through the real ``kubernetes`` client.

The API server is a stand-in (``tests/lifecycle/kube_standin.py``): no Kubernetes API server can
run on the machines this project is built on. It speaks the real InferenceService, Deployment,
Pod and Event paths, and its pods are real model server processes that load the version their
pod-template annotation names, so what a rollout serves is what a real predictor would load.
A light load runs during every rollout and counts failed requests; the figures are printed
(``pytest -s``). The registry is a separate sqlite one, the versions copies of the two trained
for the gate tests, under their own prefix.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field

import pytest
from mlflow import MlflowClient

from rakuten_common.bundle import Manifest
from tests.lifecycle.conftest import ROLLOUT_API, promote
from tests.lifecycle.kube_standin import ANNOTATION, StandInCluster
from tests.support.s3 import BUCKET
from training_job.promotion.smoke import call
from training_job.training.registry import Registry

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]
PREFIX = f"s3://{BUCKET}/rollout"


@dataclass
class Load:
    """One client calling the Service back to back during a rollout: versions seen, failures."""

    url: str
    key: str | None = None
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    running: bool = True
    finished: float = 0.0

    def __enter__(self) -> Load:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while self.running:
            version, problem = call(self.url, key=self.key)
            (self.answers if version else self.failures).append((time.monotonic(), version or problem))
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join(30)

    def after(self, moment: float) -> set[str]:
        """Versions answered after ``moment`` (time.monotonic())."""
        return {version for at, version in self.answers if at > moment}

    def sequence(self) -> list[str]:
        """Versions in the order answered, consecutive duplicates merged."""
        out = []
        for _, version in self.answers:
            if not out or out[-1] != version:
                out.append(version)
        return out


def s3_client(s3):
    import boto3

    return boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def versions(good_version, worse_version, s3, tmp_path_factory):
    """The two trained versions copied under PREFIX and registered in a fresh sqlite registry;
    the worse one, registered last, is the challenger."""
    client = s3_client(s3)
    for trained in (good_version, worse_version):
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"lifecycle/{trained.version}/")["Contents"]
        for item in listing:
            client.copy_object(Bucket=BUCKET, Key=item["Key"].replace("lifecycle/", "rollout/", 1),
                               CopySource={"Bucket": BUCKET, "Key": item["Key"]})
    tracking = f"sqlite:///{tmp_path_factory.mktemp('rollout-registry') / 'mlflow.db'}"
    mlflow = MlflowClient(tracking)
    experiment = mlflow.create_experiment("rollout-tests")
    registry = Registry(client=mlflow)
    numbers = {}
    for trained in (good_version, worse_version):
        manifest = Manifest(**json.loads(client.get_object(
            Bucket=BUCKET, Key=f"rollout/{trained.version}/manifest.json")["Body"].read()))
        run = mlflow.create_run(experiment)
        numbers[trained.version] = registry.register(run.info.run_id, f"{PREFIX}/{trained.version}", manifest).number
    return {"tracking": tracking, "good": good_version.version, "worse": worse_version.version,
            "numbers": numbers, "registry": registry}


@pytest.fixture(scope="module")
def env(versions, lifecycle_env, tmp_path_factory) -> dict[str, str]:
    return {**lifecycle_env, "MLFLOW_TRACKING_URI": versions["tracking"], "INFERENCE_SERVICE": "rakuten",
            "POD_NAMESPACE": "rakuten", "ROLLOUT_POLL_SECONDS": "0.5", "ROLLOUT_SMOKE_TIMEOUT_SECONDS": "10"}


@pytest.fixture(scope="module")
def first_champion(versions, env) -> str:
    """The good version made champion without a rollout (the pointer the first pods load)."""
    first = promote({k: v for k, v in env.items() if k != "INFERENCE_SERVICE"}, "--to", versions["good"])
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    return versions["good"]


@pytest.fixture(scope="module")
def cluster(versions, first_champion, env, s3, artifacts_dir, tmp_path_factory):
    """The stand-in cluster, its first pod serving the champion through the pointer (a fresh install)."""
    standin = StandInCluster(PREFIX, {**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("pods-cache"))},
                             artifacts_dir / "standin")
    standin.kubeconfig_path = standin.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    standin.first_pod()
    yield standin
    standin.stop()


def run_promote(cluster: StandInCluster, env: dict[str, str], *args: str, key: str | None = None, **extra: str):
    cluster.events.clear()
    with Load(cluster.proxy.url, key) as load:
        time.sleep(1)
        done = promote({**env, "KUBECONFIG": str(cluster.kubeconfig_path), **extra}, *args)
        load.finished = time.monotonic()
        time.sleep(1)
    seconds = [float(s) for s in re.findall(r"Rollout (?:done|FAILED) after ([0-9.]+) s", done.stdout + done.stderr)]
    print(f"\n{args}: exit {done.returncode}; rollout steps {seconds} s; {len(load.answers)} answers "
          f"{load.sequence()}, {len(load.failures)} failed requests {load.failures[:3]}")
    for method, path in cluster.requests:  # nothing beyond what the chart's Role grants
        assert any(m == method and re.fullmatch(p, path) for m, p, *_ in ROLLOUT_API), (method, path)
    return done, load


def champion(versions) -> str:
    return versions["registry"].aliases()["champion"]


def pinned(cluster) -> str | None:
    return (cluster.isvc["spec"]["predictor"].get("annotations") or {}).get(ANNOTATION)


def test_forced_promotion_rolls_out_under_load_without_a_failed_request(cluster, versions, env):
    assert call(cluster.proxy.url)[0] == versions["good"]
    done, load = run_promote(cluster, env, "--force")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # old and new pods both serve for a moment (surge), then only the new one; no request fails
    assert load.failures == [] and load.sequence()[0] == versions["good"] and load.sequence()[-1] == versions["worse"]
    assert set(load.sequence()) == {versions["good"], versions["worse"]} and load.after(load.finished) == {versions["worse"]}
    assert pinned(cluster) == versions["worse"] and champion(versions) == versions["numbers"][versions["worse"]]
    assert [e["reason"] for e in cluster.events] == ["ModelPromoted", "ModelRolledOut"]
    event = cluster.events[-1]
    assert event["involvedObject"] | {"resourceVersion": None} == {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "rakuten",
        "namespace": "rakuten", "uid": "0b7c1e9e-standin", "resourceVersion": None}
    assert versions["registry"].get(versions["numbers"][versions["worse"]]).tags["rollout"] == "succeeded"


def test_a_rollout_that_never_gets_ready_is_rolled_back(cluster, versions, env, s3):
    cluster.behaviour = "never_ready"
    done, load = run_promote(cluster, env, "--to", versions["good"], ROLLOUT_TIMEOUT_SECONDS="8")
    assert done.returncode == 4, done.stdout[-3000:] + done.stderr[-3000:]
    assert "not Ready after 8 s" in done.stderr
    assert champion(versions) == versions["numbers"][versions["worse"]] and pinned(cluster) == versions["worse"]
    assert json.loads(s3_client(s3).get_object(
        Bucket=BUCKET, Key="rollout/champion.json")["Body"].read())["version"] == versions["worse"]
    assert [e["reason"] for e in cluster.events] == ["ModelPromoted", "RolloutFailed", "ModelRolledBack"]
    assert load.failures == [] and load.sequence() == [versions["worse"]]


def test_a_rollout_answering_the_wrong_version_is_rolled_back(cluster, versions, env):
    cluster.behaviour = "stale"
    done, load = run_promote(cluster, env, "--to", versions["good"])
    assert done.returncode == 4, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"answered model_version {versions['worse']}, expected {versions['good']}" in done.stderr
    assert champion(versions) == versions["numbers"][versions["worse"]] and pinned(cluster) == versions["worse"]
    assert [e["type"] for e in cluster.events] == ["Normal", "Warning", "Warning"]
    assert load.failures == [] and load.sequence() == [versions["worse"]]
    cluster.behaviour = "rolling"


def test_an_inference_service_pinned_to_another_version_converges_to_the_champion(cluster, versions, env):
    with cluster.lock:  # e.g. a promotion run without --inference-service since the last rollout
        cluster.isvc["spec"]["predictor"]["annotations"][ANNOTATION] = versions["good"]
        cluster.isvc["metadata"]["resourceVersion"] = str(int(cluster.isvc["metadata"]["resourceVersion"]) + 1)
    done, load = run_promote(cluster, env)
    assert done.returncode == 0 and "pins " + versions["good"] in done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    assert pinned(cluster) == versions["worse"] and [e["reason"] for e in cluster.events] == ["ModelRolledOut"]
    assert load.failures == [] and load.sequence() == [versions["worse"]]


def other_than_champion(versions) -> str:
    """The one of the two versions that is not champion now (the next rollout's target)."""
    numbers = versions["numbers"]
    return next(v for v in (versions["good"], versions["worse"]) if numbers[v] != champion(versions))


def served_by_champion(versions) -> str:
    return next(v for v in (versions["good"], versions["worse"]) if versions["numbers"][v] == champion(versions))


def successful_patches(cluster) -> list[dict]:
    return [body["spec"]["predictor"] for body, status in cluster.patches if status == 200]


@pytest.fixture(scope="module")
def knative(versions, first_champion, env, s3, artifacts_dir, tmp_path_factory):
    """A Knative-mode stand-in as a fresh install leaves it: the first revision never got ready (no
    model to load yet), so no revision has been rolled out. The tests below run on it in order."""
    standin = StandInCluster(PREFIX, {**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("kn-cache"))},
                             artifacts_dir / "standin-knative", knative=True)
    standin.kubeconfig_path = standin.kubeconfig(tmp_path_factory.mktemp("kube-kn") / "config")
    standin.unready_first_revision()
    yield standin
    standin.stop()


def test_a_first_knative_rollout_waits_for_all_the_traffic(knative, versions, env):
    """KServe splits the traffic only once a revision has been rolled out (ready with 100 %): on a
    first install the new revision gets 100 % whatever canaryTrafficPercent says. The rollout takes
    no canary step then, and waits for 100 % (waiting for a 20 % share timed out: exit 4)."""
    target = other_than_champion(versions)
    done, _ = run_promote(knative, env, "--to", target, ROLLOUT_CANARY_PERCENT="20", ROLLOUT_TIMEOUT_SECONDS="300")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no canary step" in done.stdout
    assert successful_patches(knative) == [{"annotations": {ANNOTATION: target}, "canaryTrafficPercent": None}]
    assert knative.rolled_out == knative.latest_ready and pinned(knative) == target
    assert call(knative.proxy.url)[0] == target


def test_knative_mode_takes_a_canary_step_first(knative, versions, env):
    previous, target = served_by_champion(versions), other_than_champion(versions)
    knative.patches.clear()
    done, load = run_promote(knative, env, "--to", target, ROLLOUT_CANARY_PERCENT="30")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "canary at 30% answers" in done.stdout
    # canary 30 %, then the field removed (100 %)
    assert successful_patches(knative) == [{"annotations": {ANNOTATION: target}, "canaryTrafficPercent": 30},
                                           {"canaryTrafficPercent": None}]
    assert "canaryTrafficPercent" not in knative.isvc["spec"]["predictor"] and pinned(knative) == target
    assert load.failures == [] and load.sequence()[0] == previous
    assert load.after(load.finished) == {target}


def test_a_conflict_on_the_canary_promotion_is_retried(knative, versions, env):
    """Writes land on the InferenceService while the canary is smoke-tested (status updates, a helm
    upgrade): the promotion patch reads the object again and retries on 409 Conflict. Here the
    stand-in answers the first two promotion patches 409 after a write of its own."""
    target = other_than_champion(versions)
    knative.patches.clear()
    knative.conflicts, knative.conflict_when = 2, lambda body: body["spec"]["predictor"] == {"canaryTrafficPercent": None}
    try:
        done, load = run_promote(knative, env, "--to", target)
    finally:
        knative.conflicts = 0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [status for _, status in knative.patches] == [200, 409, 409, 200]
    assert done.stdout.count("409 Conflict") == 2
    assert pinned(knative) == target and load.failures == [] and load.after(load.finished) == {target}


#: The previous revision's cold start in the next test, and the per-call timeout the rollout gets.
#: On a cluster a cold start (model download + load) takes longer than the old fixed 10 s per
#: call, and the chart passes predictor.timeout (60 s) as the per-call timeout; scaled down here
#: to 15 s and 20 s (still above the old 10 s, so that the old code fails), with a 60 s deadline.
COLD_START_SECONDS, CALL_TIMEOUT_SECONDS = 15, 20


def test_the_canary_smoke_waits_for_a_cold_previous_revision(knative, versions, env):
    """During training the previous revision scaled to zero. The canary smoke calls go through the
    main route, 80 % of them to that revision: the first waits for its cold start (the stand-in's
    gateway holds it COLD_START_SECONDS, as Knative's activator does); the smoke waits as long as
    the route's timeout and retries failed calls until its deadline, instead of giving up."""
    previous, target = served_by_champion(versions), other_than_champion(versions)
    cold = next(pod for _, pod in knative.revision_pods.values() if pod and pod.url in
                {url for url, _ in knative.proxy.routes})
    knative.proxy.cold[cold.url] = COLD_START_SECONDS
    knative.patches.clear()
    try:
        done = promote({**env, "KUBECONFIG": str(knative.kubeconfig_path)}, "--to", target,
                       extra_env={"ROLLOUT_CANARY_PERCENT": "20", "ROLLOUT_SMOKE_TIMEOUT_SECONDS": "60",
                                  "ROLLOUT_SMOKE_CALL_TIMEOUT_SECONDS": str(CALL_TIMEOUT_SECONDS)})
    finally:
        knative.proxy.cold.clear()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert cold.url in knative.proxy.warm_at  # the previous revision was called, and waited for
    assert "canary at 20% answers" in done.stdout and pinned(knative) == target
    assert [p.get("canaryTrafficPercent") for p in successful_patches(knative)] == [20, None]
    assert previous != target


def test_a_failed_knative_canary_never_gets_all_the_traffic_during_the_rollback(knative, versions, env):
    """The canary answers the old version (its revision ignores the pin): the rollback first sends
    all the traffic to the rolled-out revision (canaryTrafficPercent: 0), then restores the pin with
    the field still 0 and waits for that revision, and only then removes the field. Removing it
    at once made KServe route 100 % to the latest *ready* revision: the failed canary."""
    previous, target = served_by_champion(versions), other_than_champion(versions)
    pin = pinned(knative)
    knative.patches.clear()
    knative.behaviour = "stale"
    try:
        done, load = run_promote(knative, env, "--to", target, ROLLOUT_CANARY_PERCENT="20")
    finally:
        knative.behaviour = "rolling"
    assert done.returncode == 4, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"none by model_version {target}" in done.stderr
    assert successful_patches(knative) == [
        {"annotations": {ANNOTATION: target}, "canaryTrafficPercent": 20},
        {"canaryTrafficPercent": 0},
        {"annotations": {ANNOTATION: pin}, "canaryTrafficPercent": 0},
        {"canaryTrafficPercent": None}]
    canary = max(name for name, (version, _) in knative.revision_pods.items() if version == target)
    shares = [split.get(canary, 0) for split in knative.traffic_log]
    first = shares.index(20)
    back = shares.index(0, first)
    assert all(share == 0 for share in shares[back:]), shares  # once rolled back, never traffic again
    assert pinned(knative) == pin and champion(versions) == versions["numbers"][previous]
    assert load.failures == [] and load.after(load.finished) == {previous}


def test_a_rollout_with_api_keys_on_sends_the_key(versions, first_champion, env, s3, artifacts_dir, tmp_path_factory):
    """The predictor has API keys on (the chart's mounted Secret); the training pod gets the same
    Secret as API_KEY_FILE. The smoke call must carry the key: without it every call is 401, the
    rollout and then its rollback fail (exit 1)."""
    folder = tmp_path_factory.mktemp("api-keys")
    keys = folder / "api-keys"
    keys.write_text("# the Secret's key\nk-" + "r" * 30 + "\n")
    keyed = StandInCluster(PREFIX, {**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("keyed-cache")),
                                    "API_KEYS_FILE": str(keys)}, artifacts_dir / "standin-keys")
    try:
        keyed.kubeconfig_path = keyed.kubeconfig(tmp_path_factory.mktemp("kube-keys") / "config")
        keyed.first_pod()
        assert call(keyed.proxy.url)[1].startswith("HTTP 401")
        target = other_than_champion(versions)
        done, load = run_promote(keyed, env, "--to", target, key="k-" + "r" * 30, API_KEY_FILE=str(keys))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert pinned(keyed) == target and load.failures == [] and load.after(load.finished) == {target}
        assert "k-" + "r" * 30 not in done.stdout + done.stderr  # never logged
    finally:
        keyed.stop()
