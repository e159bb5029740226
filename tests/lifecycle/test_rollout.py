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
            version, problem = call(self.url)
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
def cluster(versions, env, s3, artifacts_dir, tmp_path_factory):
    """The stand-in cluster, its first pod serving the champion through the pointer (a fresh install)."""
    first = promote({k: v for k, v in env.items() if k != "INFERENCE_SERVICE"}, "--to", versions["good"])
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    standin = StandInCluster(PREFIX, {**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("pods-cache"))},
                             artifacts_dir / "standin")
    standin.kubeconfig_path = standin.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    standin.first_pod()
    yield standin
    standin.stop()


def run_promote(cluster: StandInCluster, env: dict[str, str], *args: str, **extra: str):
    cluster.events.clear()
    with Load(cluster.proxy.url) as load:
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


def test_knative_mode_takes_a_canary_step_first(versions, env, s3, artifacts_dir, tmp_path_factory):
    knative = StandInCluster(PREFIX, {**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("kn-cache"))},
                             artifacts_dir / "standin-knative", knative=True)
    try:
        knative.kubeconfig_path = knative.kubeconfig(tmp_path_factory.mktemp("kube-kn") / "config")
        knative.first_pod()
        done, load = run_promote(knative, env, "--to", versions["good"], ROLLOUT_CANARY_PERCENT="30")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "canary at 30% answers" in done.stdout
        patches = [p for m, p in knative.requests if m == "PATCH"]
        assert len(patches) == 2  # canary 30 %, then the field removed (100 %)
        assert "canaryTrafficPercent" not in knative.isvc["spec"]["predictor"] and pinned(knative) == versions["good"]
        assert load.failures == [] and load.sequence()[0] == versions["worse"]
        assert load.after(load.finished) == {versions["good"]}
    finally:
        knative.stop()
