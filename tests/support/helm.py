"""Helpers of the chart tests: real helm/kubectl from scripts/install-tools.sh, rendering, object
walking, and a strict check of an InferenceService against the KServe SDK's own API models."""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.servers import REPO
from tests.support.tiers import starts

CHART = REPO / "charts" / "rakuten-serving"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
#: The chart's defaults and every ci/ scenario, with their test ids.
SCENARIOS = [None, *CI_VALUES]
SCENARIO_IDS = ["defaults", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
INSTALL_TOOLS = REPO / "scripts" / "install-tools.sh"
TOOLS_BIN = REPO / ".tools" / "bin"
RELEASE, NAMESPACE = "rakuten", "rakuten"

#: Kinds served by CRDs (no schema in kubernetes-validate): checked by dedicated tests instead.
CRD_KINDS = {"InferenceService", "PodMonitor", "PrometheusRule"}


@dataclass(frozen=True)
class Tools:
    helm: str
    kubectl: str


@pytest.fixture(scope="session")
@starts("helm")
def tools() -> Tools:
    """helm and kubectl installed by scripts/install-tools.sh (npm package, into .tools/bin).

    Without them the helm tests skip on a developer machine, but fail under CI (env CI set)."""
    problem = None
    try:
        done = subprocess.run(["bash", str(INSTALL_TOOLS)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            problem = f"scripts/install-tools.sh failed ({done.returncode}): {done.stderr[-2000:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = f"scripts/install-tools.sh could not run: {exc}"
    helm, kubectl = TOOLS_BIN / "helm", TOOLS_BIN / "kubectl"
    if problem is None and not (os.access(helm, os.X_OK) and os.access(kubectl, os.X_OK)):
        problem = f"no helm/kubectl in {TOOLS_BIN} after scripts/install-tools.sh"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return Tools(str(helm), str(kubectl))


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def template_args(values: Path | None = None, sets: list[str] | None = None) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["-f", str(values)]
    for item in sets or []:
        args += ["--set", item]
    return args


def render(tools: Tools, values: Path | None = None, sets: list[str] | None = None,
           with_tests: bool = True) -> list[dict]:
    """`helm template` -> list of objects (hooks and the `helm test` pod included)."""
    done = run([tools.helm, *template_args(values, sets)])
    assert done.returncode == 0, done.stderr
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    if not with_tests:
        objects = [o for o in objects if (o["metadata"].get("annotations") or {}).get("helm.sh/hook") != "test"]
    return objects


@pytest.fixture(scope="session")
def rendered(tools) -> dict[str, list[dict]]:
    """Every scenario rendered once per session: {scenario id: objects}."""
    return {name: render(tools, values) for name, values in zip(SCENARIO_IDS, SCENARIOS)}


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


# ---- pods -----------------------------------------------------------------------------------

@dataclass
class PodView:
    """A pod template of any workload, with the labels its pods will carry."""

    where: str               # "Kind/name"
    labels: dict[str, str]
    spec: dict               # has containers / initContainers / securityContext / volumes


def pod_views(objects: list[dict]) -> list[PodView]:
    views = []
    for o in objects:
        kind, name = o["kind"], o["metadata"]["name"]
        where = f"{kind}/{name}"
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            template = o["spec"]["template"]
            views.append(PodView(where, template["metadata"].get("labels", {}), template["spec"]))
        elif kind == "CronJob":
            template = o["spec"]["jobTemplate"]["spec"]["template"]
            views.append(PodView(where, template["metadata"].get("labels", {}), template["spec"]))
        elif kind == "Pod":
            views.append(PodView(where, o["metadata"].get("labels", {}), o["spec"]))
        elif kind == "InferenceService":
            views.append(PodView(where, predictor_pod_labels(o), o["spec"]["predictor"]))
    return views


def predictor_pod_labels(isvc: dict) -> dict[str, str]:
    """The labels KServe puts on the predictor pods: the ISVC's labels, spec.predictor.labels,
    then serving.kserve.io/inferenceservice=<name> and component=predictor (KServe's
    pkg/controller/v1beta1/inferenceservice/components/predictor.go: utils.Union(isvc.Labels,
    predictor labels, {InferenceServicePodLabelKey: isvc.Name, KServiceComponentLabel: "predictor"}))."""
    return {**isvc["metadata"].get("labels", {}), **isvc["spec"]["predictor"].get("labels", {}),
            "serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"}


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def views_by_component(objects: list[dict]) -> dict[str, list[PodView]]:
    out: dict[str, list[PodView]] = {}
    for view in pod_views(objects):
        out.setdefault(view.labels.get("app.kubernetes.io/component", "?"), []).append(view)
    return out


def container(view: PodView, name: str) -> dict:
    return next(c for c in containers(view.spec) if c["name"] == name)


def server_container(isvc: dict) -> dict:
    return next(c for c in isvc["spec"]["predictor"]["containers"] if c["name"] == "kserve-container")


def flag(args: list[str], name: str) -> str:
    """The value of ``--name=value`` in an argument list (exactly one expected)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


def secret_refs(container_: dict) -> set[str]:
    """Names of the Secrets a container reads (env valueFrom and envFrom)."""
    names = {e["valueFrom"]["secretKeyRef"]["name"] for e in container_.get("env", [])
             if (e.get("valueFrom") or {}).get("secretKeyRef")}
    return names | {e["secretRef"]["name"] for e in container_.get("envFrom", []) if "secretRef" in e}


def volume_secrets(spec: dict) -> set[str]:
    """Names of the Secrets a pod mounts (secret and projected volumes)."""
    names = set()
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in (volume.get("projected") or {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def env_of(container: dict) -> dict[str, str | None]:
    """Plain env values; None for valueFrom entries."""
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def matches(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels + matchExpressions) against a label set."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not ok:
            return False
    return True


# ---- strict check against the KServe SDK models ---------------------------------------------

#: Types named in the SDK's openapi_types that it ships no class for, mapped to kubernetes client
#: classes of the same schema (or to scalars: quantities are strings or numbers in YAML).
SDK_ALIASES = {
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
}
QUANTITY_TYPES = {"ResourceQuantity", "V1beta1MetricQuantity"}
_SCALARS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "object": (object,),
            "date": (str,), "datetime": (str,), "bytes": (str,)}


class SchemaError(AssertionError):
    pass


def model_class(name: str):
    import kserve.models
    import kubernetes.client.models

    name = SDK_ALIASES.get(name, name)
    for module in (kserve.models, kubernetes.client.models):
        cls = getattr(module, name, None)
        if cls is not None and hasattr(cls, "attribute_map"):
            return cls
    raise SchemaError(f"no SDK model class {name!r}: cannot check below it")


def check_model(data, type_name: str, path: str = "$") -> None:
    """Recursively check ``data`` (parsed YAML) against an SDK model type: every key must be in
    the model's attribute_map (JSON names), every value of the declared type. Raises SchemaError.

    The SDKs' own deserialisation silently drops unknown keys, which is exactly how a
    misspelled field (``minReplica``) ships unnoticed; this refuses them."""
    if data is None:
        return
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        if not isinstance(data, list):
            raise SchemaError(f"{path}: expected a list ({type_name}), got {type(data).__name__}")
        for i, item in enumerate(data):
            check_model(item, m.group(1), f"{path}[{i}]")
        return
    if m := re.fullmatch(r"dict\((\w+), (.+)\)|Dict\[(\w+), (.+)\]", type_name):
        if not isinstance(data, dict):
            raise SchemaError(f"{path}: expected a map ({type_name}), got {type(data).__name__}")
        for key, value in data.items():
            value_type = m.group(2) or m.group(4)
            if re.search(r"\.(limits|requests)$", path) and isinstance(value, (int, float)):
                value_type = "ResourceQuantity"  # a quantity: `cpu: 1` is as valid as `cpu: "1"`
            check_model(value, value_type, f"{path}.{key}")
        return
    if type_name in QUANTITY_TYPES:
        if not isinstance(data, (str, int, float)) or isinstance(data, bool):
            raise SchemaError(f"{path}: expected a quantity, got {data!r}")
        return
    if type_name in _SCALARS:
        if type_name == "int" and isinstance(data, bool) or not isinstance(data, _SCALARS[type_name]):
            raise SchemaError(f"{path}: expected {type_name}, got {type(data).__name__} {data!r}")
        return
    cls = model_class(type_name)
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected an object ({type_name}), got {type(data).__name__}")
    json_to_attr = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    for key, value in data.items():
        if key not in json_to_attr:
            raise SchemaError(f"{path}.{key}: unknown field of {cls.__name__} "
                              f"(known: {', '.join(sorted(json_to_attr))})")
        check_model(value, cls.openapi_types[json_to_attr[key]], f"{path}.{key}")


def check_inference_service(isvc: dict) -> None:
    check_model(isvc, "V1beta1InferenceService")
    if isvc.get("apiVersion") != "serving.kserve.io/v1beta1":
        raise SchemaError(f"apiVersion {isvc.get('apiVersion')!r} is not serving.kserve.io/v1beta1")


# ---- Makefile -------------------------------------------------------------------------------

def make_variables(*names: str) -> dict[str, str]:
    """Values of Makefile variables as make computes them (Makefile + mk/*.mk), without running
    any recipe: a `print-%` rule is given on stdin next to the project's Makefile."""
    rule = "print-%:\n\t@echo '$*=$($*)'\n"
    done = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-",
                           *(f"print-{n}" for n in names)],
                          input=rule, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {n: values.get(n, "") for n in names}


def kubernetes_version(default: str = "1.33") -> str:
    """KUBERNETES_VERSION of k8s/versions.env (the kind cluster's), as major.minor."""
    env = REPO / "k8s" / "versions.env"
    if env.exists() and (m := re.search(r"^KUBERNETES_VERSION=v?(\d+\.\d+)", env.read_text(), re.M)):
        return m.group(1)
    return default


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())
