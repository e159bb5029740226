"""Every mode the chart offers, rendered with the real helm (issue 17, chart items): the Knative
rollout reaches the ingress gateway's pods and pins revisions like Standard mode, API keys reach
every client of the predictor, the rollout policy exists whenever the rollout can run and only
training pods get it, an external Secret without KServe's annotations installs (with a note),
MinIO provisioning is no hook, an upgrade never retrains unless asked, and batch predictions
run on demand from a suspended CronJob."""
from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.support.fake_apiserver import CORE, KSERVE, PROMETHEUS_OPERATOR, Cluster, serving
from tests.support.helm import (
    CHART,
    NAMESPACE,
    RELEASE,
    by_kind,
    container,
    containers,
    env_of,
    flag,
    matches,
    one,
    pod_views,
    predictor_pod_labels,
    render,
    run,
    server_container,
    template_args,
    views_by_component,
)
from tests.support.netpol import Endpoint, address, allowed, pod
from training_job.promotion.kserve_status import ANNOTATION

pytestmark = pytest.mark.helm

KNATIVE = CHART / "ci" / "knative-values.yaml"
KIND = CHART / "ci" / "kind-values.yaml"
S3_DATA = ["training.data.uri=s3://rakuten-datasets/rakuten"]
API_SERVER = address("10.96.0.1")  # the kubernetes Service (apiServer.cidrs empty: any address)


def training_pod(objects) -> Endpoint:
    return pod(views_by_component(objects)["training"][0].labels)


# ---- 1. Knative: the smoke call reaches the gateway's pods ------------------------------------

def kourier_gateway(namespace: str = "kourier-system") -> Endpoint:
    """A pod of Kourier's gateway (net-kourier config/300-gateway.yaml: kourier-internal 80 -> 8081)."""
    return Endpoint({"app": "3scale-kourier-gateway"}, namespace)


def test_knative_rollout_may_reach_the_ingress_gateway_pods(tools):
    """kube-network-policies filters after the Service translation: the policy must admit the
    gateway pods' namespace and port (8081), which port 80 of the ExternalName never is."""
    objects = render(tools, KNATIVE)
    policies, training = by_kind(objects, "NetworkPolicy"), training_pod(objects)
    assert allowed(policies, training, kourier_gateway(), 8081), "training -> kourier-internal's pods (8081)"
    assert not allowed(policies, training, kourier_gateway("default"), 8081), "any namespace on 8081"
    assert not allowed(policies, training, pod({"app": "curl"}), 8081)
    istio = render(tools, KNATIVE, ["training.promotion.rollout.knativeGateway.namespace=istio-system",
                                    "training.promotion.rollout.knativeGateway.port=8082"])
    policies = by_kind(istio, "NetworkPolicy")
    assert allowed(policies, training_pod(istio), kourier_gateway("istio-system"), 8082)
    assert not allowed(policies, training_pod(istio), kourier_gateway(), 8081)


# ---- 4. Knative revisions pinned to a model version -------------------------------------------

@pytest.mark.parametrize("values", [None, KNATIVE], ids=["standard", "knative"])
def test_every_mode_pins_the_version_through_the_pod_annotation(tools, values):
    server = server_container(one(render(tools, values), "InferenceService"))
    assert flag(server["args"], "model_uri").endswith("/$(MODEL_VERSION_PIN)")
    (pin,) = [e for e in server["env"] if e["name"] == "MODEL_VERSION_PIN"]
    assert pin["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{ANNOTATION}']"


def test_knative_set_up_enables_fieldref():
    patch = yaml.safe_load((CHART.parents[1] / "k8s" / "knative-features-patch.yaml").read_text())["data"]
    assert patch.get("kubernetes.podspec-fieldref") == "enabled"


# ---- 7. API keys: the predictor's clients get the key file ------------------------------------

def key_file_of(view) -> str | None:
    """API_KEY_FILE of a pod's main container, checked to be a file of the mounted keys Secret."""
    main = view.spec["containers"][0]
    path = env_of(main).get("API_KEY_FILE")
    if path is None:
        return None
    volumes = {v["name"]: v for v in view.spec["volumes"]}
    (mount,) = [m for m in main["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount.get("readOnly") is True, view.where
    secret = volumes[mount["name"]]["secret"]
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    file = path.removeprefix(mount["mountPath"] + "/")
    assert not items or file in items, f"{view.where}: {file} is not a file of the mounted Secret"
    return f"{secret['secretName']}:{items.get(file, file)}"


@pytest.mark.parametrize("values", [None, KNATIVE], ids=["standard", "knative"])
def test_api_keys_reach_the_rollout_and_the_helm_test(tools, values):
    objects = render(tools, values, ["predictor.apiKeys.enabled=true", *S3_DATA, "batchPredict.enabled=true"])
    components = views_by_component(objects)
    secret = "rakuten-rakuten-serving-api-keys:api-keys"
    assert {key_file_of(v) for v in components["training"]} == {secret}, "training Job and CronJob"
    assert len(components["training"]) == 2
    assert key_file_of(components["tests"][0]) == secret, "helm test pod"
    assert env_of(components["tests"][0].spec["containers"][0])["API_KEY_FILE"] == \
        "/etc/rakuten-serving/api-keys/api-keys", "the client convention: a file whose first key line is the key"
    # least privilege: the batch pods run the model in-process and never call the predictor
    assert all(key_file_of(v) is None for v in components["batch-predict"])


def test_api_keys_of_an_existing_secret_and_none_without_keys(tools):
    own = render(tools, sets=["predictor.apiKeys.enabled=true", "predictor.apiKeys.existingSecret=clients",
                              "predictor.apiKeys.secretKey=keys.txt"])
    for view in [*views_by_component(own)["training"], *views_by_component(own)["tests"]]:
        assert key_file_of(view) == "clients:keys.txt", view.where
        assert env_of(view.spec["containers"][0])["API_KEY_FILE"] == "/etc/rakuten-serving/api-keys/keys.txt"
    for view in pod_views(render(tools)):
        assert all("API_KEY_FILE" not in env_of(c) for c in containers(view.spec)), view.where


# ---- 9. the rollout policy whenever the rollout can run; batch pods apart ----------------------

def test_manual_training_runs_reach_the_api_server_without_the_install_job(tools):
    """`make train-job` instantiates the CronJob, always rendered: its pods need the rollout egress."""
    objects = render(tools, sets=["training.job.enabled=false"])
    assert not [j for j in by_kind(objects, "Job") if j["metadata"]["name"].endswith("-train-1")]
    policies = by_kind(objects, "NetworkPolicy")
    (cronjob,) = by_kind(objects, "CronJob")
    training = pod(cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])
    assert allowed(policies, training, API_SERVER, 443) and allowed(policies, training, API_SERVER, 6443)
    predictor = pod(predictor_pod_labels(one(objects, "InferenceService")))
    assert allowed(policies, training, predictor, 8080)


@pytest.mark.parametrize("values", [None, KIND, KNATIVE], ids=["defaults", "kind", "knative"])
def test_batch_pods_have_their_own_component_and_no_api_access(tools, values):
    objects = render(tools, values, [*S3_DATA, "batchPredict.enabled=true"])
    policies, views = by_kind(objects, "NetworkPolicy"), pod_views(objects)
    batch = [v for v in views if v.labels.get("rakuten-serving/job") == "batch-predict"]
    assert len(batch) == 2, "the install/upgrade Job and the on-demand CronJob"
    minio = pod(views_by_component(objects)["minio"][0].labels)
    for view in batch:
        assert view.labels["app.kubernetes.io/component"] == "batch-predict", view.where
        assert view.spec["automountServiceAccountToken"] is False and not view.spec["serviceAccountName"].endswith(
            "-training")
        src = pod(view.labels)
        assert not allowed(policies, src, API_SERVER, 443), f"{view.where} -> API server"
        assert allowed(policies, src, minio, 9000), f"{view.where} -> MinIO"
        assert allowed(policies, src, Endpoint({"k8s-app": "kube-dns"}, "kube-system"), 53)
    assert allowed(policies, training_pod(objects), API_SERVER, 443)
    for policy in policies:  # every selector still selects something
        assert any(matches(policy["spec"]["podSelector"], v.labels) for v in views), policy["metadata"]["name"]


# ---- 10. an external Secret without KServe's annotations --------------------------------------

EXTERNAL = ["minio.enabled=false", "s3.endpoint=s3.example.com:443", "s3.useHttps=true", "auth.existingSecret=ext"]


def external_secret() -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ext", "namespace": NAMESPACE},
            "data": {"AWS_ACCESS_KEY_ID": "QUtJQQ==", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"}}


def test_external_secret_without_kserve_annotations_installs_with_a_note(tools, tmp_path):
    """No storageUri, so no storage initializer reads the s3-* annotations: nothing to refuse."""
    cluster = Cluster(kinds={**CORE, **KSERVE, **PROMETHEUS_OPERATOR})
    cluster.add(external_secret())
    with serving(cluster, tmp_path) as kubeconfig:
        args = [tools.helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=server",
                "--disable-openapi-validation"]
        for item in EXTERNAL:
            args += ["--set", item]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    assert done.returncode == 0, done.stderr
    notes = install_notes(tools, tmp_path, EXTERNAL)
    assert "serving.kserve.io/s3-* annotations on" in notes and "only if you give the predictor a storageUri" in notes
    assert "annotate secret ext serving.kserve.io/s3-endpoint=s3.example.com:443" in notes
    assert "s3-* annotations" not in install_notes(tools, tmp_path, [])


def install_notes(tools, tmp_path, sets: list[str], upgrade: bool = False) -> str:
    """NOTES.txt as `helm install` prints it (client-side dry run: no cluster)."""
    args = [tools.helm, "upgrade" if upgrade else "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--dry-run=client"]
    if upgrade:
        args.append("--install")
    for item in sets:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")})
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


# ---- 11. provisioning: an ordinary Job, so that `helm install --wait` cannot deadlock --------

@pytest.mark.parametrize("values", [None, KIND], ids=["defaults", "kind"])
def test_no_hook_but_the_helm_test_pod(tools, values):
    objects = render(tools, values)
    hooks = {o["metadata"]["name"]: (o["metadata"].get("annotations") or {}).get("helm.sh/hook") for o in objects}
    assert {name: hook for name, hook in hooks.items() if hook} == {"rakuten-rakuten-serving-test-predictor": "test"}
    (job,) = [v for v in pod_views(objects) if v.labels.get("app.kubernetes.io/component") == "minio-provisioning"]
    assert job.where == "Job/rakuten-rakuten-serving-minio-provisioning-1", "named after the revision (immutable)"
    assert "until mc alias set" in container(job, "mc")["args"][0], "it waits for MinIO itself"


def test_provisioning_job_name_keeps_the_revision_when_truncated(tools):
    objects = render(tools, sets=["fullnameOverride=" + "a" * 52])
    (job,) = [o for o in by_kind(objects, "Job") if "provisioning" in o["metadata"]["name"]]
    assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"].endswith("-provisioning-1")


# ---- 14. an upgrade never retrains unless asked -------------------------------------------------

def training_jobs(tools, *args: str) -> list[dict]:
    done = run([tools.helm, *template_args(), *args])
    assert done.returncode == 0, done.stderr
    objects = [d for d in yaml.safe_load_all(done.stdout) if d]
    return [j for j in by_kind(objects, "Job") if j["metadata"]["labels"]["app.kubernetes.io/component"] == "training"]


def test_install_trains_and_an_upgrade_does_not_unless_asked(tools, tmp_path):
    (install,) = training_jobs(tools)
    assert install["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", \
        "the next upgrade must not delete (kill) a training in progress"
    assert training_jobs(tools, "--is-upgrade") == []
    assert len(training_jobs(tools, "--is-upgrade", "--set", "training.job.onUpgrade=true")) == 1
    assert training_jobs(tools, "--set", "training.job.enabled=false") == []
    notes = install_notes(tools, tmp_path, [])
    assert "The first training run (Job rakuten-rakuten-serving-train-1)" in notes


# ---- 15. batch predictions on demand ------------------------------------------------------------

def test_batch_predictions_on_demand_from_a_suspended_cronjob(tools):
    objects = render(tools, sets=S3_DATA)
    assert not by_kind(objects, "Job") or all("batch" not in j["metadata"]["name"] for j in by_kind(objects, "Job"))
    (cronjob,) = [c for c in by_kind(objects, "CronJob") if c["metadata"]["labels"][
        "app.kubernetes.io/component"] == "batch-predict"]
    assert cronjob["spec"]["suspend"] is True and cronjob["metadata"]["name"] == "rakuten-rakuten-serving-batch-predict"
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    main = spec["containers"][0]
    assert flag(main["args"], "model-uri") == "s3://rakuten-models/rakuten-classifier", "the champion of the prefix"
    assert flag(main["args"], "output") == "s3://rakuten-datasets/predictions/$(JOB_NAME).csv", "one CSV per run"
    (job_name,) = [e for e in main["env"] if e["name"] == "JOB_NAME"]
    assert job_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    fixed = render(tools, sets=[*S3_DATA, "batchPredict.outputUri=s3://rakuten-datasets/out.csv"])
    (cronjob,) = [c for c in by_kind(fixed, "CronJob") if "batch" in c["metadata"]["name"]]
    main = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert flag(main["args"], "output") == "s3://rakuten-datasets/out.csv" and "JOB_NAME" not in env_of(main)
    assert [c["metadata"]["name"] for c in by_kind(render(tools), "CronJob")] == ["rakuten-rakuten-serving-train"], \
        "no batch CronJob without test data in S3"
