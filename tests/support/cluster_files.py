"""Readers shared by the offline tests of the cluster files (kind config, k8s/, make, workflows)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.servers import REPO

KIND_CONFIG = REPO / "kind-config.yaml"
K8S = REPO / "k8s"
VERSIONS = K8S / "versions.env"
CLUSTER_MK = REPO / "mk" / "cluster.mk"
DOCS = REPO / "docs" / "kubernetes.md"
WORKFLOWS = REPO / ".github" / "workflows"
CHART = REPO / "charts" / "rakuten-serving"
KPS_VALUES = REPO / "charts" / "kube-prometheus-stack-values.yaml"

#: Host ports of the project's kind port plan (docs/kubernetes.md).
PORT_PLAN = {30080: "V2 predictor", 30300: "Grafana", 30901: "MinIO console", 30500: "MLflow"}


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
    invocation = (r"(?:^|[\s;&|(`\"@])(?:\$\(MAKE\)|make)((?:[ \t]+(?:-[-\w]+|[A-Z_][A-Z0-9_]*=\S*))*)"
                  r"[ \t]+([a-z][\w.-]*)")
    for match in re.finditer(invocation, text, re.MULTILINE):
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


def recipe(makefile: Path, target: str) -> str:
    """The recipe lines of ``target`` in a make fragment (up to the next blank line)."""
    text = makefile.read_text()
    start = text.index(f"\n{target}:")
    end = text.find("\n\n", start + 1)
    return text[start:end if end != -1 else None]
