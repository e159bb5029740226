"""Offline checks of the kind/Kubernetes files: what can be verified without a cluster.

kind-config.yaml, k8s/ (manifests, values, pinned versions), mk/cluster.mk, scripts/e2e.sh,
the GitHub workflows and docs/kubernetes.md. The cluster itself is exercised by `make e2e`
(scripts/e2e.sh) only; docs/kubernetes.md says which claim is verified where.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.servers import REPO

pytestmark = pytest.mark.helm

KIND_CONFIG = REPO / "kind-config.yaml"
K8S = REPO / "k8s"
VERSIONS = K8S / "versions.env"
CLUSTER_MK = REPO / "mk" / "cluster.mk"
E2E = REPO / "scripts" / "e2e.sh"
DOCS = REPO / "docs" / "kubernetes.md"
WORKFLOWS = REPO / ".github" / "workflows"
CHART = REPO / "charts" / "rakuten-serving"
KPS_VALUES = REPO / "charts" / "kube-prometheus-stack-values.yaml"

#: Host ports of the project's kind port plan (docs/kubernetes.md).
PORT_PLAN = {30080: "V2 predictor", 30300: "Grafana", 30901: "MinIO console", 30500: "MLflow"}

#: kind.x-k8s.io/v1alpha4 fields (sigs.k8s.io/kind/pkg/apis/config/v1alpha4/types.go).
KIND_CLUSTER_FIELDS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates",
                       "runtimeConfig", "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902",
                       "containerdConfigPatches", "containerdConfigPatchesJSON6902"}
KIND_NODE_FIELDS = {"role", "image", "labels", "extraMounts", "extraPortMappings",
                    "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902"}
KIND_PORT_FIELDS = {"containerPort", "hostPort", "listenAddress", "protocol"}
VERSION_RE = re.compile(r"^(knative-)?v?\d+\.\d+\.\d+$")


def tool(name: str) -> str | None:
    """The pinned copy from scripts/install-tools.sh, else one on PATH."""
    pinned = REPO / ".tools" / "bin" / name
    return str(pinned) if os.access(pinned, os.X_OK) else shutil.which(name)


def versions() -> dict[str, str]:
    pairs = {}
    for line in VERSIONS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def kind_config() -> dict:
    return yaml.safe_load(KIND_CONFIG.read_text())


def mapped_ports() -> dict[int, dict]:
    plane = [n for n in kind_config()["nodes"] if n["role"] == "control-plane"][0]
    return {m["hostPort"]: m for m in plane.get("extraPortMappings", [])}


def make_help_targets() -> set[str]:
    out = subprocess.run(["make", "--no-print-directory", "-s", "help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def make_targets_in(text: str) -> set[str]:
    """Targets of `make [VAR=x ...] [-flags] TARGET` invocations in shell-like text."""
    found = set()
    for match in re.finditer(r"(?:^|[\s;&|(`\"])(?:\$\(MAKE\)|make)((?:[ \t]+(?:-[-\w]+|[A-Z_][A-Z0-9_]*=\S*))*)[ \t]+([a-z][\w.-]*)",
                             text, re.MULTILINE):
        found.add(match.group(2))
    return found


def code_of_markdown(text: str) -> str:
    """Fenced blocks and inline code spans of a Markdown text (where commands are)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL))
    return "\n".join(blocks + spans)


def load_workflow(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    if True in workflow:  # PyYAML reads the key `on` as a boolean
        workflow["on"] = workflow.pop(True)
    return workflow


# ---------------------------------------------------------------------------------------------
# kind-config.yaml
# ---------------------------------------------------------------------------------------------

def test_kind_config_uses_v1alpha4_fields_only():
    config = kind_config()
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(config) <= KIND_CLUSTER_FIELDS, set(config) - KIND_CLUSTER_FIELDS
    for node in config["nodes"]:
        assert set(node) <= KIND_NODE_FIELDS, set(node) - KIND_NODE_FIELDS
        assert node["role"] in {"control-plane", "worker"}
        for mapping in node.get("extraPortMappings", []):
            assert set(mapping) <= KIND_PORT_FIELDS, set(mapping) - KIND_PORT_FIELDS
            assert mapping.get("protocol", "TCP") in {"TCP", "UDP", "SCTP"}
            assert isinstance(mapping["containerPort"], int) and isinstance(mapping["hostPort"], int)


def test_kind_cluster_has_one_control_plane_and_two_workers():
    roles = [node["role"] for node in kind_config()["nodes"]]
    assert roles.count("control-plane") == 1
    assert roles.count("worker") == 2


def test_kind_node_image_is_pinned_by_digest_to_the_pinned_kubernetes():
    pinned = versions()["KUBERNETES_VERSION"]
    images = {node.get("image") for node in kind_config()["nodes"]}
    assert len(images) == 1, f"all nodes should run the same image: {images}"
    image = images.pop()
    assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}", image), image
    assert image.split("@")[0] == f"kindest/node:{pinned}"
    minor = int(pinned.split(".")[1])
    assert minor >= 32, "KServe 0.21 needs Kubernetes 1.32 or newer"


def test_kind_port_mappings_are_the_port_plan_on_localhost():
    mappings = mapped_ports()
    assert set(mappings) == set(PORT_PLAN)
    for port, mapping in mappings.items():
        assert mapping["containerPort"] == port, "NodePort N is published as host port N"
        assert mapping.get("listenAddress") == "127.0.0.1", f"{port} must listen on 127.0.0.1 only"
    workers = [n for n in kind_config()["nodes"] if n["role"] == "worker"]
    assert not any(n.get("extraPortMappings") for n in workers), "map once, on the control plane"


def test_e2e_checks_the_same_host_ports():
    match = re.search(r"^HOST_PORTS=\(([\d\s]+)\)", E2E.read_text(), re.MULTILINE)
    assert match, "scripts/e2e.sh defines HOST_PORTS=(...)"
    assert {int(p) for p in match.group(1).split()} == set(mapped_ports())


# ---------------------------------------------------------------------------------------------
# NodePorts of the kind scenario
# ---------------------------------------------------------------------------------------------

def kind_scenario_files() -> list[Path]:
    return sorted((CHART / "ci").glob("*kind*values.yaml")) if (CHART / "ci").is_dir() else []


def node_ports_in_values(data, under_node_port: bool = False) -> set[int]:
    """Integers under keys named like nodePort/nodePorts, anywhere in a values tree."""
    ports: set[int] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            inside = under_node_port or "nodeport" in str(key).lower()
            ports |= node_ports_in_values(value, inside)
    elif isinstance(data, list):
        for item in data:
            ports |= node_ports_in_values(item, under_node_port)
    elif under_node_port and isinstance(data, int) and not isinstance(data, bool) and 30000 <= data <= 32767:
        ports.add(data)
    return ports


def rendered_node_ports(values: Path) -> set[int]:
    helm = tool("helm")
    out = subprocess.run([helm, "template", "rakuten-serving", str(CHART), "--namespace", "rakuten",
                          "-f", str(values)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ports = set()
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc.get("kind") == "Service" and doc["spec"].get("type") == "NodePort":
            for port in doc["spec"]["ports"]:
                assert "nodePort" in port, f"Service {doc['metadata']['name']}: NodePort without a fixed nodePort"
                ports.add(port["nodePort"])
    return ports


def test_every_node_port_of_the_kind_scenario_has_a_kind_mapping():
    files = kind_scenario_files()
    if not files:
        pytest.skip(f"no {CHART.relative_to(REPO)}/ci/*kind*values.yaml yet: only the port plan "
                    "constant is checked (test_kind_port_mappings_are_the_port_plan_on_localhost)")
    mapped = set(mapped_ports())
    use_helm = tool("helm") is not None and (CHART / "Chart.yaml").is_file()
    for values in files:
        if use_helm:
            ports = rendered_node_ports(values)
        else:
            ports = node_ports_in_values(yaml.safe_load(values.read_text()))
        assert ports, f"{values.name} exposes no NodePort"
        assert ports <= mapped, f"{values.name}: NodePorts {sorted(ports - mapped)} have no kind port mapping"
    if use_helm:  # the whole plan minus Grafana (kube-prometheus-stack) comes from our chart
        assert set(PORT_PLAN) - {30300} <= ports, f"chart NodePorts {sorted(ports)} miss part of the plan"


def test_grafana_node_port_has_a_kind_mapping():
    if not KPS_VALUES.is_file():
        pytest.skip(f"{KPS_VALUES.relative_to(REPO)} not written yet")
    grafana = yaml.safe_load(KPS_VALUES.read_text()).get("grafana", {})
    service = grafana.get("service", {})
    assert service.get("type") == "NodePort"
    assert service.get("nodePort") == 30300 and 30300 in mapped_ports()


# ---------------------------------------------------------------------------------------------
# k8s/: manifests, values files, pinned versions
# ---------------------------------------------------------------------------------------------

def k8s_yaml_files() -> list[Path]:
    files = sorted(K8S.glob("*.yaml"))
    assert files, "k8s/ has no YAML file"
    return files


def test_k8s_manifests_validate_against_the_kubernetes_schemas():
    import kubernetes_validate

    version = versions()["KUBERNETES_VERSION"].lstrip("v")
    manifests = 0
    for path in k8s_yaml_files():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
            if path.name.endswith("-values.yaml"):
                assert "apiVersion" not in doc and "kind" not in doc, f"{path.name} is a Helm values file"
                continue
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: not a Kubernetes object"
            kubernetes_validate.validate(doc, version, strict=True)
            manifests += 1
    assert manifests >= 3


def test_namespaces_manifest_creates_the_three_namespaces():
    docs = list(yaml.safe_load_all((K8S / "namespaces.yaml").read_text()))
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"} == {"rakuten", "monitoring", "kserve"}


def test_kserve_values_select_standard_mode_without_ingress():
    values = yaml.safe_load((K8S / "kserve-values.yaml").read_text())
    controller = values["kserve"]["controller"]
    assert controller["deploymentMode"] == "Standard"
    assert controller["gateway"]["disableIngressCreation"] is True


def test_metrics_server_values_work_on_kind():
    values = yaml.safe_load((K8S / "metrics-server-values.yaml").read_text())
    assert "--kubelet-insecure-tls" in values["args"]


def test_versions_are_pinned():
    pins = versions()
    expected = {"KIND_VERSION", "KUBERNETES_VERSION", "CERT_MANAGER_VERSION", "KSERVE_VERSION",
                "METRICS_SERVER_CHART_VERSION", "KUBE_PROMETHEUS_STACK_VERSION", "KEDA_CHART_VERSION",
                "KNATIVE_VERSION"}
    assert expected <= set(pins), expected - set(pins)
    for key, value in pins.items():
        assert VERSION_RE.match(value), f"{key}={value!r} is not an exact version"
    for path in [KIND_CONFIG, CLUSTER_MK, E2E, *k8s_yaml_files(), WORKFLOWS / "e2e-kind.yml"]:
        text = path.read_text().replace("ubuntu-latest", "")
        assert not re.search(r"[:/@]latest\b|--version\s+latest", text), f"{path.name} uses 'latest'"


def test_cluster_mk_takes_every_version_from_versions_env():
    text = CLUSTER_MK.read_text()
    assert re.search(r"^include k8s/versions\.env$", text, re.MULTILINE)
    for line in text.splitlines():
        if "--version" in line:
            assert re.search(r"--version \$\([A-Z_]+\)", line), f"hard-coded version: {line.strip()}"
    for key in versions():
        if key not in {"KNATIVE_VERSION", "KIND_VERSION", "KUBERNETES_VERSION"}:
            assert f"$({key})" in text, f"{key} is pinned but not used by mk/cluster.mk"


def test_cluster_mk_variables_are_overridable():
    text = CLUSTER_MK.read_text()
    for name in ["CLUSTER_NAME", "KIND", "KUBECTL", "HELM", "NAMESPACE", "RELEASE", "KIND_VALUES"]:
        assert re.search(rf"^{name}\s*\?=", text, re.MULTILINE), f"{name} should be set with ?="
    assert ".tools/bin/helm" in text


def test_cluster_commands_always_name_the_kind_context():
    """No kubectl/helm call may fall back to whatever the current kubeconfig context is."""
    for line in CLUSTER_MK.read_text().splitlines():
        if line.startswith("\t") and re.search(r"\$\((KUBECTL|HELM)\) (?!--(kube-)?context)", line):
            assert "echo" in line, f"use $(KUBECTL_CTX)/$(HELM_CTX): {line.strip()}"
    e2e = E2E.read_text()
    assert not re.search(r'^\s*"\$(KUBECTL|HELM)" (?!--)', e2e, re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Scripts
# ---------------------------------------------------------------------------------------------

def shell_scripts() -> list[Path]:
    return sorted((REPO / "scripts").glob("*.sh"))


def test_scripts_parse_with_bash_n():
    for script in shell_scripts():
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (apt-get install -y shellcheck)")
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    # Every script: warnings and errors. scripts/e2e.sh (the cluster entry point): every severity.
    result = subprocess.run([shellcheck, "-S", "warning", *map(str, shell_scripts())], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([shellcheck, str(E2E)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_e2e_script_is_strict_and_reports_failures():
    text = E2E.read_text()
    assert "set -euo pipefail" in text
    assert re.search(r"^trap on_exit EXIT", text, re.MULTILINE)
    assert "collect_diagnostics" in text and "E2E FAILED at step" in text
    assert "KEEP_CLUSTER" in text
    assert os.access(E2E, os.X_OK)


def test_e2e_help_and_unknown_step():
    result = subprocess.run(["bash", str(E2E), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "KEEP_CLUSTER" in result.stdout
    result = subprocess.run(["bash", str(E2E), "no-such-step"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown step" in result.stderr


# ---------------------------------------------------------------------------------------------
# Make targets referenced by the scripts, the docs and the workflows
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def help_targets() -> set[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return make_help_targets()


def test_cluster_targets_are_in_make_help(help_targets):
    required = {"cluster-create", "cluster-delete", "cluster-addons", "kind-load", "deploy", "train-job",
                "call-model", "loadtest-cluster", "grafana", "e2e", "addon-keda"}
    assert required <= help_targets, required - help_targets


def test_targets_used_by_e2e_script_exist(help_targets):
    used = set(re.findall(r"\bmk ([a-z][\w-]*)", E2E.read_text()))
    assert {"cluster-create", "images", "kind-load", "deploy", "loadtest"} <= used
    assert used <= help_targets, f"scripts/e2e.sh calls missing make targets: {sorted(used - help_targets)}"


def test_targets_used_by_cluster_mk_exist(help_targets):
    used = make_targets_in(CLUSTER_MK.read_text())
    assert used <= help_targets, f"mk/cluster.mk calls missing make targets: {sorted(used - help_targets)}"


def test_targets_in_docs_exist(help_targets):
    used = make_targets_in(code_of_markdown(DOCS.read_text()))
    assert {"cluster-create", "cluster-addons", "deploy", "e2e"} <= used
    assert used <= help_targets, f"docs/kubernetes.md names missing make targets: {sorted(used - help_targets)}"


def test_workflows_parse_and_call_existing_targets(help_targets):
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = load_workflow(path)
        assert workflow.get("on") and workflow.get("jobs"), path.name
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    assert re.search(r"@v\d+(\.\d+)*$|@[0-9a-f]{40}$", step["uses"]), f"unpinned action {step['uses']}"
                used = make_targets_in(step.get("run", ""))
                assert used <= help_targets, f"{path.name} calls missing make targets: {sorted(used - help_targets)}"


def test_e2e_workflow_triggers_and_diagnostics():
    workflow = load_workflow(WORKFLOWS / "e2e-kind.yml")
    triggers = workflow["on"]
    assert {"workflow_dispatch", "schedule", "push"} <= set(triggers)
    assert any(p.startswith("charts/") for p in triggers["push"]["paths"])
    assert any(p.startswith("k8s/") for p in triggers["push"]["paths"])
    steps = workflow["jobs"]["e2e"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "make e2e" in runs and "make venv" in runs
    upload = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload and upload[0]["if"] == "failure()"
    kind = [s for s in steps if s.get("uses", "").startswith("helm/kind-action")]
    assert kind and "KIND_VERSION" in kind[0]["with"]["version"]
    python = [s for s in steps if s.get("uses", "").startswith("actions/setup-python")]
    assert python and python[0]["with"]["python-version"] == "3.11"


def test_ci_workflow_runs_ci_run():
    workflow = load_workflow(WORKFLOWS / "ci.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    runs = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert "bash .ci/run" in runs


# ---------------------------------------------------------------------------------------------
# scripts/e2e.sh steps against a fake kubectl and stub servers (control flow, parsing, messages)
# ---------------------------------------------------------------------------------------------

FAKE_KUBECTL = r"""#!/usr/bin/env bash
# Answers scripts/e2e.sh's kubectl calls from a scenario ($FAKE_SCENARIO); logs every call.
dir="$(dirname "$0")"
echo "kubectl $*" >> "$dir/calls.log"
args="$*"
case "$args" in
  *"get jobs -o jsonpath"*) printf 'rakuten-serving-minio-bucket\nrakuten-serving-train\n' ;;
  *"get jobs --sort-by"*) printf 'rakuten-serving-train\n' ;;
  *"get cronjobs"*) [[ "$FAKE_SCENARIO" == cron ]] && printf 'rakuten-serving-retrain\n' ;;
  *"get job rakuten-serving-train -o json") cat "$dir/job.json" ;;
  *"get job rakuten-serving-minio-bucket -o jsonpath"*)
     echo 'Error from server (NotFound): jobs.batch "rakuten-serving-minio-bucket" not found' >&2; exit 1 ;;
  *"get job "*"-o jsonpath"*)
     n=$(cat "$dir/count" 2>/dev/null || echo 0); echo $((n + 1)) > "$dir/count"
     if [[ "$FAKE_SCENARIO" == failjob ]]; then printf 'Failed '; elif (( n >= 1 )); then printf 'Complete '; fi ;;
  *"create -f -"*) cat > "$dir/created.json"; echo "job.batch/created" ;;
  *"create job"*) echo "job.batch/created" ;;
  *"get pods -l job-name"*) echo pod/train-manual-0 ;;
  *" logs "*) echo "fake training log line" ;;
  *"get inferenceservices -o jsonpath"*) printf 'rakuten-serving' ;;
  *"get hpa -o jsonpath"*) printf 'rakuten-serving-predictor\n' ;;
  *"get hpa rakuten-serving-predictor -o jsonpath"*) [[ "$FAKE_SCENARIO" == nometrics ]] || echo 37 ;;
  *"port-forward"*) sleep 30 ;;
  *) echo "fake kubectl: $args" ;;
esac
"""

TRAINING_JOB = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "rakuten-serving-train", "namespace": "rakuten", "uid": "u1", "resourceVersion": "7",
                 "labels": {"app.kubernetes.io/component": "training", "controller-uid": "u1",
                            "batch.kubernetes.io/controller-uid": "u1", "job-name": "rakuten-serving-train",
                            "batch.kubernetes.io/job-name": "rakuten-serving-train"},
                 "annotations": {"meta.helm.sh/release-name": "rakuten-serving"}},
    "spec": {"backoffLimit": 2, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}},
             "template": {"metadata": {"labels": {"app.kubernetes.io/component": "training",
                                                  "batch.kubernetes.io/controller-uid": "u1",
                                                  "controller-uid": "u1", "job-name": "rakuten-serving-train"}},
                          "spec": {"restartPolicy": "Never",
                                   "containers": [{"name": "train", "image": "rakuten-serving/training-job:0.1.0"}]}}},
    "status": {"succeeded": 1},
}


@pytest.fixture
def fake_cluster(tmp_path):
    import json

    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    (tmp_path / "job.json").write_text(json.dumps(TRAINING_JOB))

    def run(step: str, scenario: str = "", **env) -> subprocess.CompletedProcess:
        (tmp_path / "count").unlink(missing_ok=True)
        environ = {**os.environ, "KUBECTL": str(kubectl), "KIND": "false", "E2E_POLL_SECONDS": "0.2",
                   "E2E_DIAG_DIR": str(tmp_path / "diag"), "FAKE_SCENARIO": scenario,
                   "PY": str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else "python3",
                   **env}
        return subprocess.run(["bash", str(E2E), step], env=environ, capture_output=True, text=True, timeout=120)

    run.dir = tmp_path
    return run


def test_e2e_waits_for_every_job_and_tolerates_jobs_deleted_by_their_ttl(fake_cluster):
    result = fake_cluster("wait-training")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rakuten-serving-minio-bucket rakuten-serving-train" in result.stdout


def test_e2e_failed_job_stops_with_the_step_and_collects_diagnostics(fake_cluster):
    result = fake_cluster("wait-training", "failjob")
    assert result.returncode == 1
    assert "E2E FAILED at step 'training Job': Job rakuten-serving-minio-bucket" not in result.stderr
    assert "E2E FAILED at step 'training Job': Job rakuten-serving-train failed" in result.stderr
    assert result.stderr.count("E2E FAILED") == 1
    assert (fake_cluster.dir / "diag" / "summary.txt").is_file()


def test_e2e_train_job_copies_the_chart_job_without_generated_fields(fake_cluster):
    import json

    result = fake_cluster("train-job")
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads((fake_cluster.dir / "created.json").read_text())
    assert job["metadata"]["name"].startswith("train-manual-")
    assert set(job["metadata"]) == {"name", "namespace", "labels"}
    assert job["metadata"]["labels"] == {"app.kubernetes.io/component": "training"}
    assert "selector" not in job["spec"] and "status" not in job
    assert job["spec"]["template"]["metadata"]["labels"] == {"app.kubernetes.io/component": "training"}
    assert job["spec"]["template"]["spec"] == TRAINING_JOB["spec"]["template"]["spec"]


def test_e2e_train_job_prefers_the_cronjob(fake_cluster):
    result = fake_cluster("train-job", "cron")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (fake_cluster.dir / "calls.log").read_text()
    assert re.search(r"create job train-manual-\S+ --from=cronjob/rakuten-serving-retrain", calls)


def test_e2e_hpa_check_needs_current_metrics(fake_cluster):
    result = fake_cluster("check-hpa")
    assert result.returncode == 0 and "HPA rakuten-serving-predictor sees CPU utilisation 37%" in result.stdout
    result = fake_cluster("check-hpa", "nometrics", E2E_HPA_TIMEOUT="1")
    assert result.returncode == 1 and "metrics-server" in result.stderr


@pytest.fixture
def stub_servers():
    """A V2 model endpoint and a Prometheus API on free 127.0.0.1 ports, in threads."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"code": 2583}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.startswith("/api/v1/query"):
                value = "42" if "rakuten_predictions_total" in self.path else "1"
                self.reply({"status": "success", "data": {"result": [{"metric": {}, "value": [0, value]}]}})
            elif self.path.startswith("/api/v1/rules"):
                self.reply({"data": {"groups": [{"name": "rakuten-serving"}]}})
            else:
                self.reply({})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.reply({"model_name": "rakuten-classifier", "id": "1", "outputs": [
                {"name": "prdtypecode", "datatype": "INT64", "shape": [1, 3], "data": [state["code"], 1560, 2060]},
                {"name": "probability", "datatype": "FP32", "shape": [1, 3], "data": [0.8, 0.1, 0.05]}]})

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, [server.server_address[1] for server in servers]
    for server in servers:
        server.shutdown()


def test_e2e_smoke_call_and_prometheus_check(fake_cluster, stub_servers):
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the project venv (make venv)")
    state, (model_port, prometheus_port) = stub_servers
    url = f"http://127.0.0.1:{model_port}"
    result = fake_cluster("smoke", MODEL_URL=url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: top-3 [(2583, 0.8)" in result.stdout
    state["code"] = 9999  # not one of the 27 classes
    result = fake_cluster("smoke", MODEL_URL=url)
    assert result.returncode == 1 and "not among the 27 classes" in result.stderr + result.stdout
    result = fake_cluster("check-metrics", PROMETHEUS_LOCAL_PORT=str(prometheus_port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "= 42" in result.stdout
