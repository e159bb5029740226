"""The chart against what KServe, Knative and KEDA actually do with it (issue 9, findings 1-3 and
the KServe/KEDA items of 6): render-time checks of the failures a real cluster showed.

KServe's, Knative's and KEDA's behaviour is encoded here from their sources (named in each
docstring): they cannot run on this machine, `make e2e` exercises them on a kind cluster.
"""
from __future__ import annotations

import math
import re

import kubernetes.client
import pytest
import yaml

from tests.support.cluster_files import recipe
from tests.support.helm import (
    CHART,
    SCENARIO_IDS,
    by_kind,
    one,
    render,
    run,
    server_container,
    template_args,
)
from tests.support.servers import REPO

pytestmark = pytest.mark.helm

KNATIVE = CHART / "ci" / "knative-values.yaml"
KEDA = CHART / "ci" / "keda-autoscaling-values.yaml"


def kserve_storage_env(secret: dict) -> dict[str, str]:
    """The S3 variables KServe's credential builder gives the storage initializer for a Secret
    listed by the predictor's ServiceAccount (pkg/credentials/s3: BuildSecretEnvs then
    BuildS3EnvVars over the *Secret's* annotations; ServiceAccount annotations are read only
    with eks.amazonaws.com/role-arn). Without an s3-endpoint annotation there is no endpoint:
    boto3 then goes to AWS."""
    annotations = secret["metadata"].get("annotations") or {}
    env = {}
    if "AWS_ACCESS_KEY_ID" in secret.get("data", {}):
        env["AWS_ACCESS_KEY_ID"] = env["AWS_SECRET_ACCESS_KEY"] = "<from the Secret>"
    if endpoint := annotations.get("serving.kserve.io/s3-endpoint"):
        scheme = "https"
        if "serving.kserve.io/s3-usehttps" in annotations:
            env["S3_USE_HTTPS"] = annotations["serving.kserve.io/s3-usehttps"]
            scheme = "http" if env["S3_USE_HTTPS"] == "0" else "https"
        env["S3_ENDPOINT"], env["AWS_ENDPOINT_URL"] = endpoint, f"{scheme}://{endpoint}"
    for key, name in (("s3-verifyssl", "S3_VERIFY_SSL"), ("s3-region", "AWS_DEFAULT_REGION")):
        if f"serving.kserve.io/{key}" in annotations:
            env[name] = annotations[f"serving.kserve.io/{key}"]
    return env


def predictor_secret(objects: list[dict]) -> tuple[dict, dict | None]:
    isvc = one(objects, "InferenceService")
    sa_name = isvc["spec"]["predictor"]["serviceAccountName"]
    sa = next(o for o in by_kind(objects, "ServiceAccount") if o["metadata"]["name"] == sa_name)
    (ref,) = sa["secrets"]
    secret = next((o for o in by_kind(objects, "Secret") if o["metadata"]["name"] == ref["name"]), None)
    return sa, secret


# ---- 1. the Secret KServe reads carries the endpoint ------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_the_secret_the_predictor_uses_gives_the_storage_initializer_our_endpoint(rendered, scenario):
    """Finding 1: with auth.existingSecret the annotations sat on the ServiceAccount only, so
    the storage initializer got no endpoint and went to AWS. Now the Secret the ServiceAccount
    lists is the chart's own (the predictor's MinIO user, or the external credentials) and is
    annotated; the storage initializer then reaches the S3 API the chart's own clients use."""
    objects = rendered[scenario]
    sa, secret = predictor_secret(objects)
    assert secret is not None, f"{scenario}: the predictor's Secret {sa['secrets']} is not the chart's"
    env = kserve_storage_env(secret)
    training = next(o for o in by_kind(objects, "CronJob"))["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    ours = {e["name"]: e.get("value") for e in training["containers"][0]["env"]}
    assert env.get("AWS_ENDPOINT_URL") == ours["AWS_ENDPOINT_URL"], (scenario, env)
    assert env["S3_USE_HTTPS"] == ours["S3_USE_HTTPS"] and env["AWS_DEFAULT_REGION"] == ours["AWS_DEFAULT_REGION"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    # nothing S3-related on the ServiceAccount: KServe would ignore it there
    assert not [k for k in (sa["metadata"].get("annotations") or {}) if k.startswith("serving.kserve.io/s3")]


def test_existing_root_secret_with_minio_still_gives_the_predictor_an_annotated_secret(tools):
    objects = render(tools, sets=["auth.existingSecret=my-root"])
    _, secret = predictor_secret(objects)
    assert secret["metadata"]["name"].endswith("-s3-predictor")
    assert kserve_storage_env(secret)["AWS_ENDPOINT_URL"].startswith("http://rakuten-rakuten-serving-minio.")


def test_external_s3_with_an_existing_secret_lists_that_secret(tools):
    """With an external S3 and auth.existingSecret, the user's Secret is the one KServe reads: the
    chart cannot annotate it, so on a live cluster it refuses one without the s3-endpoint
    annotation (tests/test_chart_live_checks.py runs that check against a fake API server)."""
    sets = ["minio.enabled=false", "s3.endpoint=s3.example.com:443", "s3.useHttps=true", "auth.existingSecret=ext"]
    sa, secret = predictor_secret(render(tools, sets=sets))
    assert sa["secrets"] == [{"name": "ext"}] and secret is None


# ---- 2. Knative mode: probes as KServe's CRD wants them, the features it needs --------------

def test_knative_probes_meet_kserves_crd_and_knative(tools):
    """Finding 2a: KServe's CRD (config/crd/full/serving.kserve.io_inferenceservices.yaml) keeps
    Kubernetes' `required: [port]` on containers[].startupProbe.httpGet; only readinessProbe and
    livenessProbe were relaxed. Knative accepts no probe port but the container's own."""
    isvc = one(render(tools, KNATIVE), "InferenceService")
    server = server_container(isvc)
    (port,) = [p["containerPort"] for p in server["ports"]]
    startup = server["startupProbe"]["httpGet"]
    # Kubernetes' own model of HTTPGetAction refuses a missing port, as the CRD schema does.
    with pytest.raises(ValueError, match="port"):
        kubernetes.client.V1HTTPGetAction(path=startup["path"], port=None)
    kubernetes.client.V1HTTPGetAction(**startup)
    assert startup["port"] == port, "Knative: the probe port must be the container port (a number)"
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"].get("port", port) == port, probe


def test_standard_probes_use_the_named_port(tools):
    server = server_container(one(render(tools), "InferenceService"))
    names = {p["name"] for p in server["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["port"] in names, probe


#: Knative Serving's defaults (pkg/apis/config/features.go, defaultFeaturesConfig): only these
#: pod fields behind a flag are on unless config-features says otherwise.
KNATIVE_ON_BY_DEFAULT = {"kubernetes.podspec-volumes-emptydir", "multi-container"}


def knative_features_needed(predictor: dict) -> set[str]:
    """The config-features flags Knative's webhook needs to accept this predictor spec."""
    needed = set()
    for field, feature in (("securityContext", "securitycontext"), ("nodeSelector", "nodeselector"),
                           ("tolerations", "tolerations"), ("affinity", "affinity"),
                           ("initContainers", "init-containers")):
        if predictor.get(field):
            needed.add(f"kubernetes.podspec-{feature}")
    if any("emptyDir" in v for v in predictor.get("volumes", [])):
        needed.add("kubernetes.podspec-volumes-emptydir")
    for c in predictor.get("containers", []):
        for e in c.get("env", []):
            if {"fieldRef", "resourceFieldRef"} & set(e.get("valueFrom") or {}):
                needed.add("kubernetes.podspec-fieldref")
    return needed


@pytest.mark.parametrize("sets", [[], ["predictor.nodeSelector.pool=inference",
                                       "predictor.tolerations[0].key=gpu", "predictor.tolerations[0].operator=Exists"]])
def test_knative_features_of_make_addon_knative_accept_the_predictor(tools, sets):
    """Finding 2b: the pod-level securityContext needs kubernetes.podspec-securitycontext, which the
    documented Knative steps never enabled. `make addon-knative` applies k8s/knative-features-patch.yaml."""
    predictor = one(render(tools, KNATIVE, sets), "InferenceService")["spec"]["predictor"]
    patch = yaml.safe_load((REPO / "k8s" / "knative-features-patch.yaml").read_text())["data"]
    enabled = {k for k, v in patch.items() if v.lower() == "enabled"} | KNATIVE_ON_BY_DEFAULT
    needed = knative_features_needed(predictor)
    assert "kubernetes.podspec-securitycontext" in needed
    assert needed <= enabled, f"Knative would reject the predictor: {sorted(needed - enabled)} disabled"
    cluster_mk = (REPO / "mk" / "cluster.mk").read_text()
    assert "knative-features-patch.yaml" in cluster_mk and "config-features" in cluster_mk
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    assert "make addon-knative" in docs and "kubernetes.podspec-securitycontext" in docs


def test_knative_cpu_limit_is_written_not_read_through_the_downward_api(tools):
    """fieldRef/resourceFieldRef are behind kubernetes.podspec-fieldref in Knative: the chart
    writes the limit itself there; Standard mode reads it with the downward API."""
    knative = server_container(one(render(tools, KNATIVE), "InferenceService"))
    (cpu,) = [e for e in knative["env"] if e["name"] == "CPU_LIMIT"]
    assert cpu["value"] == str(knative["resources"]["limits"]["cpu"])
    standard = server_container(one(render(tools), "InferenceService"))
    (cpu,) = [e for e in standard["env"] if e["name"] == "CPU_LIMIT"]
    assert cpu["valueFrom"]["resourceFieldRef"] == {"containerName": "kserve-container", "resource": "limits.cpu"}


# ---- 3. KEDA: the query is the total over the pods ---------------------------------------------

def keda_replicas(query_value: float, threshold: float, min_replicas: int, max_replicas: int) -> int:
    """What KEDA's prometheus scaler asks for when KServe passes no metricType (KEDA's default
    AverageValue: the HPA divides the metric by the target per replica)."""
    return max(min_replicas, min(max_replicas, math.ceil(query_value / threshold)))


def outer_aggregation(query: str) -> str:
    return re.match(r"\s*([a-z_]+)\s*(?:by|without)?\s*(?:\([^)]*\))?\s*\(", query).group(1)


def test_keda_query_sums_in_flight_requests_over_the_pods(tools):
    """Finding 3: KServe's KEDA reconciler hands over serverAddress, query and threshold =
    target.value only, so KEDA scales to ceil(query / threshold). The default query was a
    per-pod average: 5 pods x 16 in flight, threshold 8 -> 2 replicas wanted. A sum gives 10."""
    isvc = one(render(tools, KEDA), "InferenceService")
    predictor = isvc["spec"]["predictor"]
    (metric,) = predictor["autoScaling"]["metrics"]
    query, target = metric["external"]["metric"]["query"], metric["external"]["target"]
    assert outer_aggregation(query) == "sum", query
    assert 'namespace="rakuten"' in query and f'isvc="{isvc["metadata"]["name"]}"' in query
    assert "rakuten_inflight_requests" in query
    assert "value" in target, "KServe reads target.value as the KEDA threshold"
    threshold, pods, inflight = float(target["value"]), 5, 16
    per_query = {"sum": pods * inflight, "avg": inflight}
    wanted = keda_replicas(per_query[outer_aggregation(query)], threshold, predictor["minReplicas"], 100)
    assert wanted == pods * inflight / threshold == 10
    assert keda_replicas(per_query["avg"], threshold, 1, 100) == 2  # the old query: scaled the wrong way


@pytest.mark.parametrize("query", ["avg(rakuten_inflight_requests)", " max by (pod) (rakuten_inflight_requests)"])
def test_a_per_pod_keda_query_is_refused(tools, query):
    done = run([tools.helm, *template_args(KEDA, [f"predictor.autoscaling.keda.query={query}"])])
    assert done.returncode != 0 and "must be a sum over the predictor pods" in done.stderr, done.stderr[-500:]


# ---- 6. KServe version, KEDA before KServe ------------------------------------------------------

def test_declared_kserve_version_knows_the_mode_names_the_chart_uses(tools):
    """`Standard`/`Knative` exist from KServe 0.16 (0.15 knows RawDeployment/Serverless only)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    required = chart["annotations"]["rakuten-serving/required-crds"]
    minimum = tuple(int(x) for x in re.search(r"KServe >= (\d+)\.(\d+)", required).groups())
    assert minimum >= (0, 16), required
    modes = {one(render(tools, v), "InferenceService")["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
             for v in (None, KNATIVE)}
    assert modes == {"Standard", "Knative"}
    pinned = re.search(r"^KSERVE_VERSION=v(\d+)\.(\d+)", (REPO / "k8s" / "versions.env").read_text(), re.M)
    assert tuple(map(int, pinned.groups())) >= minimum
    assert f"KServe >= {minimum[0]}.{minimum[1]}" in (CHART / "README.md").read_text()


def test_keda_is_installed_before_kserve_or_kserve_restarted():
    """KServe watches ScaledObjects only if KEDA's CRDs existed when its controller started."""
    text = (REPO / "mk" / "cluster.mk").read_text()
    addons = text[text.index("\ncluster-addons:"):text.index("\naddon-namespaces:")]
    assert addons.index("addon-keda") < addons.index("addon-kserve"), "KEDA=1 must come before KServe"
    for addon in ("addon-keda", "addon-knative"):
        assert "$(MAKE) --no-print-directory kserve-restart" in recipe(REPO / "mk" / "cluster.mk", addon), addon
    assert "rollout restart deployment/kserve-controller-manager" in recipe(REPO / "mk" / "cluster.mk", "kserve-restart")
