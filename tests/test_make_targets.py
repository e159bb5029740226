"""The cluster make targets and scripts, offline: variables, the kind context on every call, the
targets each file names exist, shell scripts lint clean, unsupported platforms are refused, and
the diagnostics dump and `make train-job` work against a fake kubectl (no cluster runs here)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.support.cluster_files import (
    CLUSTER_MK,
    DOCS,
    REPO,
    WORKFLOWS,
    code_of_markdown,
    load_workflow,
    make_help_targets,
    make_targets_in,
    recipe,
)

pytestmark = pytest.mark.helm


@pytest.fixture(scope="module")
def help_targets() -> set[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return make_help_targets()


def test_cluster_mk_variables_are_overridable():
    text = CLUSTER_MK.read_text()
    for name in ["CLUSTER_NAME", "KIND", "KUBECTL", "HELM", "NAMESPACE", "RELEASE", "KIND_VALUES", "KEEP_CLUSTER",
                 "SKIP_BUILD", "KEDA", "KNATIVE", "DATASET_SRC", "DATASET_URI"]:
        assert re.search(rf"^{name}\s*\?=", text, re.MULTILINE), f"{name} should be set with ?="
    assert ".tools/bin/helm" in text


def test_cluster_commands_always_name_the_kind_context():
    """No kubectl/helm call may fall back to whatever the current kubeconfig context is."""
    for line in CLUSTER_MK.read_text().splitlines():
        if line.startswith("\t") and re.search(r"\$\((KUBECTL|HELM)\) (?!--(kube-)?context)", line):
            assert "echo" in line, f"use $(KUBECTL_CTX)/$(HELM_CTX): {line.strip()}"
    diagnostics = (REPO / "scripts" / "cluster-diagnostics.sh").read_text()
    assert not re.search(r'^\s*"\$(KUBECTL|HELM)" (?!--)', diagnostics, re.MULTILINE)


def test_cluster_targets_are_in_make_help(help_targets):
    required = {"cluster-create", "cluster-delete", "cluster-addons", "kind-load", "deploy", "train-job",
                "call-model", "loadtest-cluster", "grafana", "e2e", "e2e-test", "cluster-diagnostics",
                "addon-keda", "addon-knative", "cluster-upload-data"}
    assert required <= help_targets, required - help_targets


def test_targets_used_by_cluster_mk_exist(help_targets):
    used = make_targets_in(CLUSTER_MK.read_text())
    assert {"cluster-up", "e2e-test", "cluster-diagnostics", "cluster-delete", "kserve-restart"} <= used
    assert used <= help_targets, f"mk/cluster.mk calls missing make targets: {sorted(used - help_targets)}"


def test_targets_in_docs_exist(help_targets):
    used = make_targets_in(code_of_markdown(DOCS.read_text()))
    assert {"cluster-create", "cluster-addons", "deploy", "e2e", "train-job", "cluster-upload-data"} <= used
    assert used <= help_targets, f"docs/kubernetes.md names missing make targets: {sorted(used - help_targets)}"


def test_workflows_call_existing_targets(help_targets):
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for job in load_workflow(path)["jobs"].values():
            for step in job["steps"]:
                used = make_targets_in(step.get("run", ""))
                assert used <= help_targets, f"{path.name} calls missing make targets: {sorted(used - help_targets)}"


def test_e2e_collects_diagnostics_on_failure_and_deletes_only_its_own_cluster():
    text = recipe(CLUSTER_MK, "e2e")
    assert "cluster-up" in text and "e2e-test" in text
    assert re.search(r"status -ne 0.*\n.*cluster-diagnostics", text), "diagnostics when a step failed"
    assert "existed=1" in text and "KEEP_CLUSTER" in text and "cluster-delete" in text
    assert "pytest -m kind tests/e2e" in recipe(CLUSTER_MK, "e2e-test")


# ---- shell scripts ----------------------------------------------------------------------------

def shell_scripts():
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
    # Every script: warnings and errors; the diagnostics dump (run when things already broke): every severity.
    result = subprocess.run([shellcheck, "-S", "warning", *map(str, shell_scripts())], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([shellcheck, str(REPO / "scripts" / "cluster-diagnostics.sh")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def fake_tool(directory, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("system, machine", [("Darwin", "arm64"), ("Linux", "aarch64"), ("Darwin", "x86_64")])
def test_install_tools_refuses_platforms_its_binaries_do_not_run_on(tmp_path, system, machine):
    fake_tool(tmp_path, "uname", f'case "$1" in -s) echo {system};; -m) echo {machine};; *) echo {system};; esac\n')
    done = subprocess.run(["bash", str(REPO / "scripts" / "install-tools.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}",
                                           "TOOLS_DIR": str(tmp_path / "tools")})
    assert done.returncode == 3, done.stderr
    assert f"unsupported platform {system}/{machine}" in done.stderr and "brew install helm kubectl" in done.stderr
    assert not (tmp_path / "tools" / "bin" / "helm").exists()


FAKE_KUBECTL = r"""
dir="$(dirname "$0")"
echo "kubectl $*" >> "$dir/calls.log"
case "$*" in
  *"get pods -o name"*) echo pod/predictor-0; echo pod/train-1 ;;
  *" logs "*"--previous"*) exit 1 ;;
  *" logs "*) echo "log of $*" ;;
  *"top pods"*) echo "error: Metrics API not available" >&2; exit 1 ;;
  *) echo "fake kubectl: $*" ;;
esac
"""


def test_cluster_diagnostics_dumps_everything_and_survives_failures(tmp_path):
    kubectl = fake_tool(tmp_path, "kubectl", FAKE_KUBECTL)
    helm = fake_tool(tmp_path, "helm", 'echo "helm $*"\n')
    out = tmp_path / "diag"
    done = subprocess.run(["bash", str(REPO / "scripts" / "cluster-diagnostics.sh"), str(out)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "KUBECTL": kubectl, "HELM": helm, "KIND": "false",
                                                      "KUBE_CONTEXT": "kind-test"})
    assert done.returncode == 0, done.stderr
    for name in ("summary.txt", "events.txt", "get-all.txt", "inferenceservices.yaml", "helm-status.txt",
                 "describe-rakuten.txt", "logs/rakuten-predictor-0.log", "logs/kserve-train-1.log"):
        assert (out / name).is_file(), name
    assert "(exit 1)" in (out / "top-pods.txt").read_text()
    assert not list(out.glob("logs/*.previous.log"))
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls and all(c.startswith("kubectl --context kind-test ") for c in calls)


def test_train_job_creates_a_job_from_the_charts_cronjob():
    """`make train-job` copies no Job (the install Job is deleted by its TTL): it instantiates
    the CronJob the chart always renders (suspended when training.cronjob.enabled is false)."""
    text = recipe(CLUSTER_MK, "train-job")
    assert "get cronjobs" in text and 'create job "$$job" --from="$$cronjob"' in text
    assert "app.kubernetes.io/component=training" in text and "*Failed*" in text and "*Complete*" in text


def test_e2e_workflow_runs_make_e2e_and_uploads_diagnostics():
    workflow = load_workflow(WORKFLOWS / "e2e-kind.yml")
    triggers = workflow["on"]
    assert {"workflow_dispatch", "schedule", "push"} <= set(triggers)
    assert any(p.startswith("charts/") for p in triggers["push"]["paths"])
    assert "tests/e2e/**" in triggers["push"]["paths"]
    steps = workflow["jobs"]["e2e"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "make e2e" in runs and "make venv" in runs
    upload = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload and upload[0]["if"] == "failure()"
    kind = [s for s in steps if s.get("uses", "").startswith("helm/kind-action")]
    assert kind and "KIND_VERSION" in kind[0]["with"]["version"]


# ---- make venv: one line per stage, pip's output in a log --------------------------------------

FAKE_PYTHON = """
# A stand-in for python3.11: `-m venv DIR` makes DIR/bin/python (this script), `-m pip` talks a lot.
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0; fi
if [ "$1 $2" = "-m pip" ]; then
  for i in $(seq 300); do echo "Collecting package-$i"; done
  if [ -n "$FAIL_PIP" ]; then echo "ERROR: No matching distribution found for package-300" >&2; exit 1; fi
  exit 0
fi
exit 2
"""


def make_venv(tmp_path, **env):
    python = fake_tool(tmp_path, "python3.11", FAKE_PYTHON)
    return subprocess.run(["make", "--no-print-directory", "venv", f"VENV={tmp_path / 'venv'}", f"PYTHON={python}",
                           f"INSTALL_LOG={tmp_path / 'log' / 'install.log'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in {**os.environ, **env}.items() if v is not None})


@pytest.mark.process
def test_make_venv_prints_one_line_per_stage_and_logs_pip(tmp_path):
    done = make_venv(tmp_path, CI=None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(" (")[0] for line in done.stdout.splitlines()] == [
        f"==> Creating {tmp_path / 'venv'} with {tmp_path / 'python3.11'}", "==> Upgrading pip",
        "==> Installing the pinned dependencies", "==> Installing this project"], done.stdout
    assert "Collecting" not in done.stdout + done.stderr
    assert "Collecting package-300" in (tmp_path / "log" / "install.log").read_text()
    assert (tmp_path / "venv" / ".installed").exists()


@pytest.mark.process
def test_make_venv_failure_names_the_log_and_shows_its_end(tmp_path):
    done = make_venv(tmp_path, FAIL_PIP="1", CI=None)
    assert done.returncode != 0
    log = tmp_path / "log" / "install.log"
    assert f"FAILED: {tmp_path / 'venv' / 'bin' / 'python'} -m pip install --upgrade pip (full log: {log})" in done.stderr
    assert "ERROR: No matching distribution found for package-300" in done.stderr
    assert "Collecting package-1\n" not in done.stderr  # only the end of the log
    assert not (tmp_path / "venv" / ".installed").exists()
    (tmp_path / "ci").mkdir()
    under_ci = make_venv(tmp_path / "ci", FAIL_PIP="1", CI="true")
    assert "Collecting package-1\n" in under_ci.stderr  # CI output shows the whole log
