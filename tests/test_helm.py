"""The Helm chart renders, lints and validates: real helm (scripts/install-tools.sh), every
ci/*-values.yaml scenario, Kubernetes JSON schemas (kubernetes-validate, strict) for core
kinds, and the KServe SDK's own API models for the InferenceService."""
from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest
import yaml

from tests.support.helm import (
    CHART,
    CI_VALUES,
    CRD_KINDS,
    RELEASE,
    SCENARIO_IDS,
    SCENARIOS,
    SchemaError,
    by_kind,
    check_inference_service,
    containers,
    kubernetes_version,
    one,
    pod_views,
    render,
    run,
    secret_refs,
    template_args,
)

pytestmark = pytest.mark.helm


def test_ci_scenarios_exist():
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "kind-values.yaml", "knative-values.yaml", "keda-autoscaling-values.yaml",
            "existing-secret-cronjob-values.yaml", "external-s3-no-monitoring-values.yaml"} <= names


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_lint_strict(tools, values):
    args = [tools.helm, "lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    done = run(args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_rendered_objects_match_kubernetes_schemas(tools, values):
    """Every non-CRD object against the strict JSON schema of the cluster's Kubernetes version
    (k8s/versions.env): unknown fields and wrong types are errors."""
    version = kubernetes_version()
    objects = render(tools, values)
    assert objects
    checked = set()
    for o in objects:
        if o["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{o['kind']}/{o['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked.add(o["kind"])
    assert {"Deployment", "Service", "Secret", "ServiceAccount", "ConfigMap", "CronJob", "Job"} <= checked \
        or values is not None


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_inference_service_matches_kserve_api_models(tools, values):
    isvc = one(render(tools, values), "InferenceService")
    check_inference_service(isvc)


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_predictor_pod_spec_matches_kubernetes_pod_schema(tools, values):
    """The predictor's pod part (containers, volumes, securityContext ...) typed as a real Pod."""
    isvc = one(render(tools, values), "InferenceService")
    predictor = isvc["spec"]["predictor"]
    pod_fields = {k: v for k, v in predictor.items() if k in {
        "containers", "initContainers", "volumes", "securityContext", "serviceAccountName", "nodeSelector",
        "tolerations", "affinity", "imagePullSecrets", "automountServiceAccountToken"}}
    if isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative":
        # Readiness and liveness carry no port there (Knative fills in the user port itself: do
        # as it does); the startupProbe keeps it (tests/test_chart_kserve.py).
        for c in pod_fields["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if "httpGet" in c.get(probe, {}):
                    c[probe]["httpGet"].setdefault("port", c["ports"][0]["containerPort"])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_fields}
    try:
        kubernetes_validate.validate(pod, kubernetes_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"predictor pod spec: {exc.message} at {list(exc.path)}")


def test_strict_kserve_check_catches_misspelled_fields(tools):
    isvc = one(render(tools), "InferenceService")
    check_inference_service(isvc)
    cases = {
        "predictor.minReplica": lambda i: i["spec"]["predictor"].__setitem__("minReplica", 1),
        "top-level spec.predictors": lambda i: i["spec"].__setitem__("predictors", {}),
        "container.imagePullPolicyy": lambda i: i["spec"]["predictor"]["containers"][0].__setitem__(
            "imagePullPolicyy", "Always"),
        "probe.httpGet.paths": lambda i: i["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"]
        .__setitem__("paths", "/"),
        "metadata.label": lambda i: i["metadata"].__setitem__("label", {}),
        "env as map": lambda i: i["spec"]["predictor"]["containers"][0].__setitem__("env", {"A": "b"}),
        "minReplicas as string": lambda i: i["spec"]["predictor"].__setitem__("minReplicas", "1"),
    }
    for name, mutate in cases.items():
        broken = copy.deepcopy(isvc)
        mutate(broken)
        with pytest.raises(SchemaError):
            check_inference_service(broken)
            pytest.fail(f"not caught: {name}")


def test_keda_autoscaling_spec_checked_deeply(tools):
    isvc = one(render(tools, CHART / "ci" / "keda-autoscaling-values.yaml"), "InferenceService")
    metric = isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]
    assert metric["external"]["metric"]["backend"] == "prometheus"
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["metric"]["serverAdress"] = "x"
    with pytest.raises(SchemaError):
        check_inference_service(broken)


@pytest.mark.parametrize("typo", ["predictor.autoscalng.minReplicas=2", "minio.persistance.size=1Gi",
                                  "monitoring.podmonitor.enabled=false", "training.cronJob.enabled=true"])
def test_values_schema_rejects_misspelled_keys(tools, typo):
    done = run([tools.helm, *template_args(sets=[typo])])
    assert done.returncode != 0 and "additional properties" in done.stderr, done.stderr[-500:]


@pytest.mark.parametrize("bad, message", [
    ("predictor.resources.limits=null", "limits"),
    ("training.containerSecurityContext.allowPrivilegeEscalation=true", "allowPrivilegeEscalation"),
    ("minio.podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
    ("predictor.deploymentMode=Serverless", "deploymentMode"),
    ("auth.secretKey=short", "secretKey"),
    ("s3.bucket=Bad_Bucket", "bucket"),
])
def test_values_schema_rejects_unsafe_or_invalid_values(tools, bad, message):
    done = run([tools.helm, *template_args(sets=[bad])])
    assert done.returncode != 0 and message in done.stderr, done.stderr[-800:]


@pytest.mark.parametrize("sets, message", [
    (["minio.enabled=false"], "s3.endpoint is required"),
    (["predictor.autoscaling.scaleMetric=concurrency"], "needs deploymentMode Knative"),
    (["predictor.autoscaling.minReplicas=0"], "scale to zero"),
    (["predictor.autoscaling.minReplicas=4"], "must not exceed maxReplicas"),
])
def test_template_refuses_inconsistent_values(tools, sets, message):
    done = run([tools.helm, *template_args(sets=sets)])
    assert done.returncode != 0 and message in done.stderr, done.stderr[-800:]


def test_no_secret_material_in_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["auth"] == {"accessKey": "", "secretKey": "", "existingSecret": ""}


def test_existing_secret_replaces_the_root_secret_only(tools):
    """auth.existingSecret holds the root (bundled MinIO) or the shared (external S3) credentials:
    the chart then creates no root Secret, but still the per-component ones with MinIO."""
    objects = render(tools, CHART / "ci" / "existing-secret-cronjob-values.yaml")
    names = {o["metadata"]["name"] for o in by_kind(objects, "Secret")}
    assert names == {f"rakuten-rakuten-serving-s3-{c}" for c in ("predictor", "training", "mlflow")}
    refs = {name for v in pod_views(objects) for c in containers(v.spec) for name in secret_refs(c)}
    assert "rakuten-s3" in refs and refs <= names | {"rakuten-s3"}
    external = render(tools, sets=["minio.enabled=false", "s3.endpoint=s3.example.com:443", "auth.existingSecret=ext"])
    assert not by_kind(external, "Secret")
    assert {name for v in pod_views(external) for c in containers(v.spec) for name in secret_refs(c)} == {"ext"}


def test_dashboard_json_is_valid_and_shipped(tools):
    dashboard = json.loads((CHART / "dashboards" / "rakuten-serving.json").read_text())
    assert dashboard["uid"] == "rakuten-serving"
    cm = next(o for o in by_kind(render(tools), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["rakuten-serving.json"]) == dashboard
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in ("Request rate", "Errors and rejections by reason", "Preprocess latency", "Predict latency",
                   "Postprocess latency", "Replicas", "CPU", "Batch size", "Predictions by prdtypecode",
                   "In-flight requests"):
        assert wanted in titles


def test_monitoring_disabled_renders_no_monitoring_objects(tools):
    objects = render(tools, sets=["monitoring.enabled=false"])
    assert not by_kind(objects, "PodMonitor") and not by_kind(objects, "PrometheusRule")
    assert not [o for o in by_kind(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]


def test_capability_check_skips_monitors_without_crds(tools):
    objects = render(tools, sets=["monitoring.checkCapabilities=true"])
    assert not by_kind(objects, "PodMonitor") and not by_kind(objects, "PrometheusRule")
    done = run([tools.helm, *template_args(sets=["monitoring.checkCapabilities=true"]),
                "--api-versions", "monitoring.coreos.com/v1/PodMonitor",
                "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"])
    assert done.returncode == 0, done.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(done.stdout) if d}
    assert {"PodMonitor", "PrometheusRule"} <= kinds


def test_notes_render(tools):
    done = run([tools.helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", "rakuten",
                "-f", str(CHART / "ci" / "kind-values.yaml")])
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    for text in ("http://localhost:30080", "/v2/models/rakuten-classifier/infer", "http://localhost:30901",
                 "http://localhost:30500", "helm test rakuten", "30300"):
        assert text in notes, text


def test_every_value_is_documented_in_values_and_readme():
    """Bitnami convention: each key has a `## @param` line, and the README's tables list them all."""
    import re

    text = (CHART / "values.yaml").read_text()
    params = re.findall(r"^\s*## @param (\S+) ", text, re.M)
    values = yaml.safe_load(text)

    def exists(path: str) -> bool:
        node = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def leaves(node: dict, prefix: str = ""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in params:
                yield from leaves(value, path + ".")
            else:
                yield path

    assert [p for p in params if not exists(p)] == [], "@param for a key that does not exist"
    undocumented = [leaf for leaf in leaves(values) if not any(leaf == p or leaf.startswith(p + ".") for p in params)]
    assert undocumented == []
    readme = (CHART / "README.md").read_text()
    assert [p for p in params if f"| `{p}` |" not in readme] == [], "README parameter table out of date"
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(CHART.parent.parent / "scripts" / "chart-params.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"])
