"""The deployed chain on the kind cluster, checked with the kubernetes client, in the order it
comes up: CRDs and webhooks, Jobs, the InferenceService, storage access, a V2 call, Prometheus,
Grafana, the HPA under load. `make e2e` prepares the cluster (`make cluster-up`) and runs these.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rakuten_common.processes import ServerProcess, free_port
from tests.e2e.cluster import condition, eventually, prometheus
from tests.support.servers import REPO

pytestmark = [pytest.mark.kind, pytest.mark.timeout(3600)]

KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
CRDS = ["inferenceservices.serving.kserve.io", "podmonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com", "certificates.cert-manager.io"]


def isvc(k8s, cluster) -> dict:
    items = k8s.custom.list_namespaced_custom_object(*KSERVE[:2], cluster.namespace, KSERVE[2],
                                                     label_selector=cluster.release_selector)["items"]
    assert items, f"no InferenceService of release {cluster.release} in {cluster.namespace}"
    return items[0]


# ---- the platform ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CRDS)
def test_crds_are_established(k8s, name):
    crd = k8s.extensions.read_custom_resource_definition(name)
    assert condition(crd, "Established"), f"CRD {name} not Established"


def test_kserve_and_cert_manager_webhooks_answer(k8s, cluster):
    """A server-side dry run goes through the admission webhooks: they must answer."""
    probe = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
             "metadata": {"name": "e2e-webhook-probe", "namespace": cluster.namespace},
             "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "example/none:1"}]}}}
    issuer = {"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
              "metadata": {"name": "e2e-webhook-probe", "namespace": cluster.namespace}, "spec": {"selfSigned": {}}}

    def dry_run(obj, plural):
        group, version = obj["apiVersion"].split("/")
        k8s.custom.create_namespaced_custom_object(group, version, cluster.namespace, plural, obj, dry_run="All")

    eventually(lambda: dry_run(probe, "inferenceservices"), 120, "KServe webhook")
    eventually(lambda: dry_run(issuer, "issuers"), 120, "cert-manager webhook")
    assert k8s.admission.list_mutating_webhook_configuration().items


# ---- the chart ----------------------------------------------------------------------------------

def test_training_job_completes(k8s, cluster):
    selector = f"{cluster.release_selector},app.kubernetes.io/component=training"

    def done() -> str | None:
        jobs = [j for j in k8s.batch.list_namespaced_job(cluster.namespace, label_selector=selector).items
                if not (j.metadata.labels or {}).get("rakuten-serving/job")]
        if not jobs:
            return "no training Job yet"
        for job in jobs:
            if condition(job, "Failed"):
                logs = subprocess.run([os.environ.get("KUBECTL", "kubectl"), "--context", cluster.context, "-n",
                                       cluster.namespace, "logs", f"job/{job.metadata.name}", "--all-containers",
                                       "--tail=60"], capture_output=True, text=True, timeout=60)
                pytest.fail(f"Job {job.metadata.name} failed:\n{logs.stdout}{logs.stderr}")
        pending = [j.metadata.name for j in jobs if not condition(j, "Complete")]
        return f"running: {pending}" if pending else None

    eventually(done, cluster.train_timeout, "training Job", interval=15)


def test_provisioning_job_did_not_fail(k8s, cluster):
    """The hook Job is deleted once it succeeded; if it is still there it must not have failed."""
    selector = f"{cluster.release_selector},app.kubernetes.io/component=minio-provisioning"
    for job in k8s.batch.list_namespaced_job(cluster.namespace, label_selector=selector).items:
        assert not condition(job, "Failed"), f"{job.metadata.name} failed: kubectl logs job/{job.metadata.name}"


def test_inference_service_becomes_ready(k8s, cluster):
    name = isvc(k8s, cluster)["metadata"]["name"]
    eventually(lambda: None if condition(k8s.custom.get_namespaced_custom_object(
        *KSERVE[:2], cluster.namespace, KSERVE[2], name), "Ready") else "not Ready",
        cluster.ready_timeout, f"InferenceService {name}", interval=10)


def test_storage_initializer_reads_the_predictor_user_and_our_endpoint(k8s, cluster):
    """Finding 1 on the cluster: KServe built the storage initializer's S3 settings from the
    predictor's own Secret (its annotations), not from the root credentials."""
    name = isvc(k8s, cluster)["metadata"]["name"]
    pods = k8s.core.list_namespaced_pod(cluster.namespace, label_selector=f"serving.kserve.io/inferenceservice={name}")
    assert pods.items, "no predictor pod"
    init = {c.name: c for c in pods.items[0].spec.init_containers or []}
    assert "storage-initializer" in init, list(init)
    env = {e.name: e for e in init["storage-initializer"].env or []}
    assert env["S3_ENDPOINT"].value.startswith(f"{cluster.release}-minio.{cluster.namespace}:"), env["S3_ENDPOINT"].value
    assert env["AWS_ENDPOINT_URL"].value.startswith("http://")
    assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name.endswith("-s3-predictor")


def test_v2_call_through_the_node_port(k8s, cluster):
    from model_server.smoke_test import SmokeSettings, run

    top = run(SmokeSettings(url=cluster.model_url, wait=180))
    assert len(top) == 3


def test_helm_test_passes(cluster):
    helm = os.environ.get("HELM") or str(REPO / ".tools" / "bin" / "helm")
    done = subprocess.run([helm, "--kube-context", cluster.context, "-n", cluster.namespace, "test", cluster.release,
                           "--timeout", "5m", "--logs"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


# ---- least privilege, with the components' own keys through a port-forward to MinIO ------------

@pytest.fixture(scope="module")
def minio_url(cluster, tmp_path_factory):
    port = free_port()
    kubectl = os.environ.get("KUBECTL") or str(REPO / ".tools" / "bin" / "kubectl")
    forward = ServerProcess([kubectl, "--context", cluster.context, "-n", cluster.namespace, "port-forward",
                             "--address", "127.0.0.1", f"svc/{cluster.release}-minio", f"{port}:9000"],
                            tmp_path_factory.mktemp("pf") / "port-forward.log")
    url = f"http://127.0.0.1:{port}"
    forward.wait_until_ready(f"{url}/minio/health/live", 60)
    yield url
    forward.stop()


def s3_as(k8s, cluster, url: str, component: str):
    import boto3

    secret = k8s.core.read_namespaced_secret(f"{cluster.release}-s3-{component}", cluster.namespace).data
    key, password = (base64.b64decode(secret[k]).decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=key, aws_secret_access_key=password,
                        region_name="us-east-1")


def denied(call) -> bool:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"] in ("AccessDenied", "403")
    return False


def test_each_component_holds_only_its_own_access(k8s, cluster, minio_url):
    predictor = s3_as(k8s, cluster, minio_url, "predictor")
    training = s3_as(k8s, cluster, minio_url, "training")
    mlflow = s3_as(k8s, cluster, minio_url, "mlflow")
    models = predictor.list_objects_v2(Bucket="rakuten-models").get("Contents", [])
    assert models, "the predictor lists the model versions"
    predictor.get_object(Bucket="rakuten-models", Key=models[0]["Key"])
    assert denied(lambda: predictor.put_object(Bucket="rakuten-models", Key="e2e/x", Body=b"x"))
    assert denied(lambda: predictor.delete_object(Bucket="rakuten-models", Key=models[0]["Key"]))
    assert denied(lambda: predictor.list_objects_v2(Bucket="rakuten-datasets"))
    training.put_object(Bucket="rakuten-datasets", Key="e2e/probe.txt", Body=b"x")
    training.delete_object(Bucket="rakuten-datasets", Key="e2e/probe.txt")
    assert denied(lambda: training.list_objects_v2(Bucket="rakuten-mlflow"))
    assert denied(lambda: mlflow.list_objects_v2(Bucket="rakuten-models"))
    assert denied(lambda: training.delete_bucket(Bucket="rakuten-models"))


# ---- monitoring --------------------------------------------------------------------------------

def test_pod_monitor_targets_are_up(k8s, cluster):
    monitor = f"podMonitor/{cluster.namespace}/{isvc(k8s, cluster)['metadata']['name']}-predictor/"

    def up() -> str | None:
        targets = [t for t in prometheus(cluster, "/api/v1/targets", state="active")["data"]["activeTargets"]
                   if t.get("scrapePool", "").startswith(monitor)]
        if not targets:
            return f"no active target of {monitor}"
        down = [t["lastError"] for t in targets if t["health"] != "up"]
        return f"targets down: {down}" if down else None

    eventually(up, 300, "PodMonitor targets", interval=10)


def test_predictions_reach_prometheus_and_rules_are_loaded(cluster):
    query = f'sum(rakuten_predictions_total{{namespace="{cluster.namespace}"}})'

    def counted() -> str | None:
        result = prometheus(cluster, "/api/v1/query", query=query)["data"]["result"]
        return None if result and float(result[0]["value"][1]) > 0 else f"{query} is empty or 0"

    eventually(counted, 300, "predictions in Prometheus", interval=10)
    groups = prometheus(cluster, "/api/v1/rules")["data"]["groups"]
    assert any("rakuten" in g["name"] for g in groups), [g["name"] for g in groups]


def test_grafana_loaded_the_dashboard(k8s, cluster):
    secrets = k8s.core.list_namespaced_secret(cluster.monitoring, label_selector="app.kubernetes.io/name=grafana").items
    assert secrets, "no Grafana admin Secret"
    user, password = (base64.b64decode(secrets[0].data[k]).decode() for k in ("admin-user", "admin-password"))
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()

    def found() -> str | None:
        request = urllib.request.Request(f"{cluster.grafana_url}/api/search?query=Rakuten",
                                         headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            uids = [d.get("uid") for d in json.loads(response.read())]
        return None if "rakuten-serving" in uids else f"dashboards found: {uids}"

    eventually(found, 180, "Grafana dashboard", interval=10)


# ---- load ----------------------------------------------------------------------------------------

def locust(cluster, *args: str, log: Path) -> ServerProcess:
    exe = Path(sys.executable).with_name("locust")
    command = [str(exe) if exe.exists() else "locust", "--config", "loadtests/locust.conf", "--host", cluster.model_url,
               "--headless", *args]
    return ServerProcess(command, log, cwd=REPO)


def test_short_load_meets_its_thresholds(cluster, tmp_path):
    run = locust(cluster, "--load-shape", "constant", "-u", "4", "-r", "4", "-t", "45s", "--max-p95-ms", "5000",
                 "--max-fail-ratio", "0.01", log=tmp_path / "locust.log")
    code = run.process.wait(180)
    assert code == 0, run.logs()[-3000:]


def test_hpa_reacts_to_a_step_load(k8s, cluster, tmp_path):
    name = isvc(k8s, cluster)["metadata"]["name"]
    hpas = [h for h in k8s.autoscaling.list_namespaced_horizontal_pod_autoscaler(cluster.namespace).items
            if h.metadata.name.startswith(f"{name}-predictor")]
    assert hpas, f"no HorizontalPodAutoscaler {name}-predictor (Standard mode, autoscalerClass hpa)"
    hpa = hpas[0]
    minimum = hpa.spec.min_replicas or 1
    load = locust(cluster, "--load-shape", "step", "--step-users", "6", "--step-seconds", "60", "--steps", "4",
                  "--max-p95-ms", "0", "--max-fail-ratio", "0.2", log=tmp_path / "locust-step.log")
    seen = {}
    try:
        def scaled() -> str | None:
            status = k8s.autoscaling.read_namespaced_horizontal_pod_autoscaler(hpa.metadata.name, cluster.namespace).status
            utilisation = [m.resource.current.average_utilization for m in status.current_metrics or [] if m.resource]
            seen.update(desired=status.desired_replicas, utilisation=utilisation, at=time.strftime("%H:%M:%S"))
            if load.exited():
                pytest.fail(f"the step load ended before the HPA reacted ({seen}):\n{load.logs()[-2000:]}")
            return None if (status.desired_replicas or 0) > minimum else f"desired {status.desired_replicas}, CPU {utilisation}%"

        eventually(scaled, 420, f"HPA {hpa.metadata.name} scaling out", interval=10)
    finally:
        load.stop()
    print(f"HPA {hpa.metadata.name}: {seen}")
