"""Cross-checks of the rendered chart against each other, the Makefile, KServe's conventions and
the real code: the mistakes that render fine and break at deploy time.

Model location (Job == InferenceService), images (== mk/images.mk), PodMonitor and Services ->
predictor pod labels and ports, restricted Pod Security on every container, NetworkPolicy
flows, env parsed by the real entrypoints, MLflow's Host check, and every metric of the dashboard
and the alerts present on a running server's /metrics. The scripts the chart ships (wait_for.py,
the `helm test` smoke test) run against the real S3 stand-in and model server.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from model_server.client import Product, infer_request, infer_url, post
from tests.helm import (CHART, CI_VALUES, NAMESPACE, RELEASE, PodView, by_kind, containers, env_of,
                        make_variables, matches, one, pod_views, predictor_pod_labels, render, tools)  # noqa: F401
from tests.servers import REPO

pytestmark = pytest.mark.helm

SCENARIOS = [None, *CI_VALUES]
SCENARIO_IDS = ["defaults", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
KIND = CHART / "ci" / "kind-values.yaml"


@pytest.fixture(scope="module")
def rendered(tools) -> dict[str, list[dict]]:
    return {name: render(tools, values) for name, values in zip(SCENARIO_IDS, SCENARIOS)}


def views_by_component(objects: list[dict]) -> dict[str, list[PodView]]:
    out: dict[str, list[PodView]] = {}
    for view in pod_views(objects):
        component = view.labels.get("app.kubernetes.io/component", "?")
        out.setdefault(component, []).append(view)
    return out


def container(view: PodView, name: str) -> dict:
    return next(c for c in containers(view.spec) if c["name"] == name)


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


# ---- model location and images --------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_training_publishes_where_kserve_reads(rendered, scenario):
    objects = rendered[scenario]
    isvc = one(objects, "InferenceService")
    server = next(c for c in isvc["spec"]["predictor"]["containers"] if c["name"] == "kserve-container")
    # exactly one version: the one pinned on the pod template (downward API), else the champion pointer's
    storage_uri, _, pin = flag(server["args"], "model_uri").rpartition("/")
    assert re.fullmatch(r"s3://[a-z0-9.-]+/[^/].*[^/]", storage_uri), storage_uri
    assert "STORAGE_URI" not in env_of(server)  # no storage initializer copying the whole prefix
    assert pin == ("" if scenario == "knative" else "$(MODEL_VERSION_PIN)")

    trainings = views_by_component(objects)["training"]
    assert trainings, "no training Job/CronJob"
    bucket = urlparse(storage_uri).netloc
    for view in trainings:
        assert env_of(container(view, "train"))["MODEL_URI"] == storage_uri, view.where
        assert flag(container(view, "wait-for-dependencies")["command"], "bucket") == bucket
    for init in isvc["spec"]["predictor"].get("initContainers", []):
        assert flag(init["command"], "model") == storage_uri
    for view in views_by_component(objects).get("minio-provisioning", []):
        assert env_of(container(view, "mc"))["BUCKET"] == bucket


def test_images_match_the_makefile(rendered):
    make = make_variables("REGISTRY", "IMAGE_TAG", "TRAINING_IMAGE", "SERVER_IMAGE")
    assert make["TRAINING_IMAGE"] and make["SERVER_IMAGE"], f"mk/images.mk defines no images: {make}"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == make["IMAGE_TAG"]
    objects = rendered["defaults"]
    by_component = views_by_component(objects)
    for component, image in (("training", make["TRAINING_IMAGE"]), ("mlflow", make["TRAINING_IMAGE"]),
                             ("predictor", make["SERVER_IMAGE"]), ("tests", make["SERVER_IMAGE"])):
        for view in by_component[component]:
            for c in containers(view.spec):
                assert c["image"] == image, (view.where, c["name"], c["image"], image)


def test_deploy_image_overrides_of_the_makefile_apply(tools):
    """mk/cluster.mk's DEPLOY_IMAGE_ARGS (--set-string <x>.image.registry/tag) reach every container."""
    sets = [f"{c}.image.{k}={v}" for c in ("training", "mlflow", "predictor")
            for k, v in (("registry", "registry.example/acme"), ("tag", "1.2.3"))]
    objects = render(tools, sets=sets)
    ours = [c["image"] for v in pod_views(objects) for c in containers(v.spec) if "minio" not in c["image"]]
    assert ours and all(i.startswith("registry.example/acme/") and i.endswith(":1.2.3") for i in ours), ours
    cluster_mk = (REPO / "mk" / "cluster.mk").read_text()
    for key in ("training.image.registry", "training.image.tag", "mlflow.image.registry", "mlflow.image.tag",
                "predictor.image.registry", "predictor.image.tag"):
        assert key in cluster_mk, key


# ---- KServe wiring: credentials, selectors, ports ---------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_s3_credentials_wired_the_way_kserve_reads_them(rendered, scenario):
    objects = rendered[scenario]
    isvc = one(objects, "InferenceService")
    sa_name = isvc["spec"]["predictor"]["serviceAccountName"]
    sa = next(o for o in by_kind(objects, "ServiceAccount") if o["metadata"]["name"] == sa_name)
    secret_name = sa["secrets"][0]["name"]
    annotations = sa["metadata"]["annotations"]
    secrets = [o for o in by_kind(objects, "Secret") if o["metadata"]["name"] == secret_name]
    if secrets:  # else an existingSecret, whose annotations come from the ServiceAccount
        assert set(secrets[0]["data"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert {k: v for k, v in secrets[0]["metadata"]["annotations"].items() if "kserve" in k} == annotations
    endpoint = annotations["serving.kserve.io/s3-endpoint"]
    assert "://" not in endpoint and annotations["serving.kserve.io/s3-usehttps"] in ("0", "1")
    services = {o["metadata"]["name"]: o for o in by_kind(objects, "Service")}
    host, port = endpoint.rsplit(":", 1)
    if host.endswith(f".{NAMESPACE}"):  # the bundled MinIO
        minio = services[host.removesuffix(f".{NAMESPACE}")]
        assert int(port) in [p["port"] for p in minio["spec"]["ports"]]
    scheme = "https" if annotations["serving.kserve.io/s3-usehttps"] == "1" else "http"
    for view in pod_views(objects):
        for c in containers(view.spec):
            env = env_of(c)
            if "AWS_ENDPOINT_URL" in env:
                assert env["AWS_ENDPOINT_URL"] == f"{scheme}://{endpoint}", (view.where, c["name"])


@pytest.mark.parametrize("scenario", [s for s in SCENARIO_IDS if s != "external-s3-no-monitoring"])
def test_pod_monitor_selects_the_predictor_pods_and_its_metrics_port(rendered, scenario):
    objects = rendered[scenario]
    isvc = one(objects, "InferenceService")
    monitor = one(objects, "PodMonitor")
    labels = predictor_pod_labels(isvc)
    assert matches(monitor["spec"]["selector"], labels)
    # ... and nothing else of the release
    for view in pod_views(objects):
        if view.where != f"InferenceService/{isvc['metadata']['name']}":
            assert not matches(monitor["spec"]["selector"], view.labels), view.where
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"].get("release") == "kube-prometheus-stack"

    server = next(c for c in isvc["spec"]["predictor"]["containers"] if c["name"] == "kserve-container")
    annotations = isvc["metadata"]["annotations"]
    http_port = int(flag(server["args"], "http_port"))
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == annotations["prometheus.kserve.io/path"] == "/metrics"
    assert int(annotations["prometheus.kserve.io/port"]) == http_port
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    if annotations["serving.kserve.io/deploymentMode"] == "Knative":
        # Knative renames the user container's (single) port to "user-port"
        assert endpoint["port"] == "user-port" and list(ports.values()) == [http_port]
    else:
        assert ports[endpoint["port"]] == http_port
        assert int(flag(server["args"], "grpc_port")) in ports.values()
    # the `isvc` label the dashboard and alerts select on: Prometheus' name for the pod label
    relabel = endpoint["relabelings"][0]
    pod_label = "serving.kserve.io/inferenceservice"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)]
    assert relabel["targetLabel"] == "isvc" and pod_label in labels


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_services_select_pods_and_named_ports(rendered, scenario):
    objects = rendered[scenario]
    views = pod_views(objects)
    for service in by_kind(objects, "Service"):
        selected = [v for v in views if matches({"matchLabels": service["spec"]["selector"]}, v.labels)]
        assert len(selected) == 1, (service["metadata"]["name"], [v.where for v in selected])
        ports = {p["name"]: p["containerPort"] for c in selected[0].spec["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), (service["metadata"]["name"], target, ports)
            if service["spec"]["type"] != "NodePort":
                assert "nodePort" not in port


def test_kind_node_ports_are_the_port_plan(rendered):
    node_ports = {p["nodePort"]: s["metadata"]["name"] for s in by_kind(rendered["kind"], "Service")
                  for p in s["spec"]["ports"] if "nodePort" in p}
    assert sorted(node_ports) == [30080, 30500, 30901], node_ports
    kps = yaml.safe_load((REPO / "charts" / "kube-prometheus-stack-values.yaml").read_text())
    assert kps["grafana"]["service"]["nodePort"] == 30300
    spec = kps["prometheus"]["prometheusSpec"]
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False
    assert spec["ruleSelectorNilUsesHelmValues"] is False
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    assert sidecar["searchNamespace"] == "ALL" and sidecar["label"] == "grafana_dashboard"
    dashboard_cm = next(o for o in by_kind(rendered["kind"], "ConfigMap") if o["metadata"]["name"].endswith("dashboard"))
    assert dashboard_cm["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]


# ---- Pod Security ----------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_every_container_is_restricted_and_bounded(rendered, scenario):
    """Pod Security 'restricted' + read-only root FS + requests and limits, for every container
    of every pod the chart makes (hooks, init containers and the `helm test` pod included)."""
    views = pod_views(rendered[scenario])
    assert len(views) >= 3
    for view in views:
        pod_sc = view.spec.get("securityContext", {})
        # an API token only where the rollout needs one: training pods, under their own ServiceAccount
        rollout = view.labels.get("app.kubernetes.io/component") == "training" and \
            view.spec["serviceAccountName"].endswith("-training")
        assert view.spec.get("automountServiceAccountToken") is rollout, view.where
        volumes = {v["name"]: v for v in view.spec.get("volumes", [])}
        for c in containers(view.spec):
            where = f"{view.where}/{c['name']}"
            sc = c.get("securityContext", {})
            effective = {**pod_sc, **sc}
            assert effective.get("runAsNonRoot") is True, where
            assert isinstance(effective.get("runAsUser"), int) and effective["runAsUser"] > 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert not sc.get("privileged"), where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {kind}"


# ---- NetworkPolicy flows ---------------------------------------------------------------------

def _peer_matches(peer: dict, labels: dict[str, str]) -> bool:
    if "namespaceSelector" in peer or "ipBlock" in peer:
        return False  # other namespaces / addresses: not pods of this release
    return matches(peer.get("podSelector", {}), labels)


def _rule_allows(rule: dict, peers_key: str, labels: dict[str, str] | None, port: int) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port for p in ports):
        return False
    peers = rule.get(peers_key)
    if not peers:
        return True
    return labels is not None and any(_peer_matches(p, labels) for p in peers)


def allowed(policies: list[dict], src: dict[str, str], dst: dict[str, str], port: int) -> bool:
    """Whether NetworkPolicies let a pod labelled `src` reach a pod labelled `dst` on `port`
    (same namespace; a pod no policy selects for a direction is open in that direction)."""
    def check(direction: str, own: dict[str, str], other: dict[str, str], key: str) -> bool:
        selecting = [p for p in policies if direction in p["spec"]["policyTypes"]
                     and matches(p["spec"]["podSelector"], own)]
        if not selecting:
            return True
        rules = [r for p in selecting for r in (p["spec"].get(direction.lower()) or [])]
        return any(_rule_allows(r, key, other, port) for r in rules)

    return check("Egress", src, dst, "to") and check("Ingress", dst, src, "from")


@pytest.mark.parametrize("scenario", [s for s in SCENARIO_IDS if s != "external-s3-no-monitoring"])
def test_network_policies_allow_exactly_the_needed_flows(rendered, scenario):
    objects = rendered[scenario]
    policies = by_kind(objects, "NetworkPolicy")
    assert policies
    views = pod_views(objects)
    for policy in policies:  # every selector selects something
        name = policy["metadata"]["name"]
        assert any(matches(policy["spec"]["podSelector"], v.labels) for v in views), name
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(matches(peer["podSelector"], v.labels) for v in views), (name, peer)
    comp = views_by_component(objects)
    label = lambda component: comp[component][0].labels  # noqa: E731
    minio = mlflow = None
    if "minio" in comp:
        minio = label("minio")
        api = container(comp["minio"][0], "minio")["ports"][0]["containerPort"]
    if "mlflow" in comp:
        mlflow = label("mlflow")
        ui = container(comp["mlflow"][0], "mlflow")["ports"][0]["containerPort"]
    training, predictor = label("training"), label("predictor")
    stranger = {"app.kubernetes.io/name": "something-else", "app": "curl"}
    if minio:
        for client in ("training", "predictor", "mlflow", "minio-provisioning"):
            if client in comp:
                assert allowed(policies, label(client), minio, api), f"{client} -> MinIO"
        assert not allowed(policies, stranger, minio, api), "MinIO open to foreign pods"
    if mlflow:
        assert allowed(policies, training, mlflow, ui), "training -> MLflow"
        assert not allowed(policies, predictor, mlflow, ui), "predictor -> MLflow should be closed"
        assert allowed(policies, mlflow, minio, api) if minio else True
    # DNS from every restricted pod
    for view in views:
        assert allowed(policies, view.labels, {"k8s-app": "kube-dns"}, 53) or not policies, view.where
    # the predictor's V2 port: from the `helm test` pod always, from anyone by default
    http = 8080
    assert allowed(policies, label("tests"), predictor, http)
    open_predictor = "existing-secret-cronjob" not in scenario
    assert allowed(policies, stranger, predictor, http) is open_predictor
    assert not allowed(policies, predictor, stranger, 443), "predictor egress should be closed"


# ---- the real entrypoints parse what the chart passes ----------------------------------------

@pytest.mark.parametrize("scenario", ["defaults", "kind", "knative"])
def test_predictor_args_and_env_parse_with_the_server(rendered, scenario, monkeypatch):
    from model_server.settings import parse_settings

    isvc = one(rendered[scenario], "InferenceService")
    server = next(c for c in isvc["spec"]["predictor"]["containers"] if c["name"] == "kserve-container")
    assert server["command"] == ["python", "-m", "model_server"]
    for key, value in env_of(server).items():
        if value is not None:
            monkeypatch.setenv(key, value)
    settings = parse_settings(server["args"])
    assert settings.model_name == "rakuten-classifier"
    assert settings.model_uri.startswith("s3://rakuten-models/rakuten-classifier/")
    assert settings.max_batch_size == 32 and settings.max_batch_time == pytest.approx(0.005)
    assert settings.limits.image.max_bytes == 10 * 1024 * 1024
    assert str(settings.model_cache_dir).startswith("/tmp/")


def test_training_env_parses_with_the_training_job(rendered, monkeypatch):
    from training_job.__main__ import build_parser

    view = views_by_component(rendered["defaults"])["training"][0]
    train = container(view, "train")
    assert train["command"] == ["python", "-m", "training_job"]
    for key, value in env_of(train).items():
        if value is not None:
            monkeypatch.setenv(key, value)
    args = build_parser().parse_args(train.get("args", []))
    assert args.model_uri == env_of(train)["MODEL_URI"] and str(args.data_dir) == "/data"
    assert args.generate_sample == 2700 and args.epochs == 12 and args.image_size == 64
    assert args.experiment == "rakuten-classifier"
    mounts = {m["mountPath"] for m in train["volumeMounts"]}
    assert "/data" in mounts


def test_mlflow_server_accepts_the_training_jobs_host_header(rendered):
    """MLflow >= 3.5 refuses unknown Host headers (DNS-rebinding guard): the Service name the
    training job uses must be in --allowed-hosts, checked with MLflow's own matcher."""
    from mlflow.server.security_utils import is_allowed_host_header

    objects = rendered["defaults"]
    mlflow = container(views_by_component(objects)["mlflow"][0], "mlflow")
    allowed_hosts = flag(mlflow["args"], "allowed-hosts").split(",")
    tracking = urlparse(env_of(container(views_by_component(objects)["training"][0], "train"))["MLFLOW_TRACKING_URI"])
    service = next(o for o in by_kind(objects, "Service") if o["metadata"]["name"] == tracking.hostname)
    assert tracking.port in [p["port"] for p in service["spec"]["ports"]]
    for host in (tracking.netloc, f"{tracking.hostname}.{NAMESPACE}.svc.cluster.local:{tracking.port}",
                 "localhost:30500", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed_hosts, host), host
    assert not is_allowed_host_header(allowed_hosts, "evil.example.com")
    assert "--serve-artifacts" in mlflow["args"]
    assert flag(mlflow["args"], "artifacts-destination").startswith("s3://rakuten-models/")
    assert flag(mlflow["args"], "backend-store-uri").startswith("sqlite:////mlflow/")


# ---- the chart's scripts, run for real ------------------------------------------------------

def shipped_script(objects: list[dict], name: str, tmp_path: Path) -> Path:
    """A script exactly as the chart ships it (from the rendered ConfigMap)."""
    cm = next(o for o in by_kind(objects, "ConfigMap") if name in o.get("data", {}))
    path = tmp_path / name
    path.write_text(cm["data"][name])
    return path


def test_wait_for_script_against_real_s3(rendered, published, s3, server_url, tmp_path):
    script = shipped_script(rendered["defaults"], "wait_for.py", tmp_path)
    env = {**os.environ, **s3.env, "PYTHONPATH": str(REPO)}
    bucket = urlparse(published.uri).netloc
    ok = subprocess.run([sys.executable, str(script), f"--bucket={bucket}", f"--model={published.uri}",
                         f"--url={server_url}/v2/health/ready", "--timeout=30"],
                        env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("ready:") == 3
    missing = subprocess.run([sys.executable, str(script), f"--model=s3://{bucket}/no-such-model",
                              "--bucket=no-such-bucket", "--timeout=2", "--interval=0.5"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "gave up" in missing.stderr, missing.stdout + missing.stderr
    assert "no complete model version" in missing.stdout


def test_helm_test_smoke_script_against_real_server(rendered, server_url, tmp_path):
    script = shipped_script(rendered["defaults"], "smoke_test.py", tmp_path)
    test_pod = next(o for o in by_kind(rendered["defaults"], "Pod"))
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = test_pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "/scripts/smoke_test.py"]
    isvc = one(rendered["defaults"], "InferenceService")
    assert flag(command, "url") == f"http://{isvc['metadata']['name']}-predictor.{NAMESPACE}.svc.cluster.local"
    done = subprocess.run([sys.executable, str(script), f"--url={server_url}", f"--model={flag(command, 'model')}"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: infer" in done.stdout


# ---- metrics used by the dashboard and the alerts exist -------------------------------------

#: Series that Prometheus itself makes (not exposed by the server).
SYNTHETIC = {"up"}
METRIC_RE = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "rakuten-serving.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def rule_exprs(objects: list[dict]) -> list[str]:
    rule = one(objects, "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    names = set(METRIC_RE.findall(expr))
    names |= set(re.findall(r"label_values\((\w+)", expr))
    return names


def scrape_names(url: str) -> tuple[set[str], str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return names, text


def send_valid_and_invalid(url: str, image: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    status, _ = post(infer_url(url), json.dumps(infer_request([Product("Lampe de chevet", "", image)])).encode(), headers)
    assert status == 200
    status, _ = post(infer_url(url), json.dumps({"inputs": []}).encode(), headers)
    assert status == 400


def test_every_dashboard_and_alert_metric_is_exposed_by_the_server(rendered, server_url, sample_dir):
    image = next((sample_dir / "images" / "image_train").glob("*.jpg")).read_bytes()
    send_valid_and_invalid(server_url, image)
    exposed, text = scrape_names(server_url)
    used = {}
    for expr in dashboard_queries() + rule_exprs(rendered["defaults"]):
        for name in metric_names(expr):
            used.setdefault(name, expr)
    assert len(used) >= 12, sorted(used)
    missing = {n: e for n, e in used.items() if n not in exposed and n not in SYNTHETIC}
    assert not missing, f"metrics not on the server's /metrics: {missing}"
    # the label names the panels group by are on the series
    for metric, label in (("rakuten_rejected_requests_total", "reason"), ("rakuten_predictions_total", "prdtypecode"),
                          ("rakuten_model_info", "version"), ("request_predict_seconds_bucket", "model_name")):
        assert re.search(rf"^{metric}\{{[^}}]*\b{label}=", text, re.M), (metric, label)
