"""Requests sized from measured use (issue 17, item 12), and the kind scenario still schedulable.

The figures come from docs/performance.md, read here so that a new measurement there and the
chart's requests cannot drift apart: the training's peak RSS at 128 px (the "Training memory and
throughput" table) and the predictor's RSS peak under load (the overload benchmark)."""
from __future__ import annotations

import re

import pytest

from tests.support.helm import CHART, containers, pod_views, render
from tests.support.servers import REPO

pytestmark = pytest.mark.helm

KIND = CHART / "ci" / "kind-values.yaml"
PERFORMANCE = (REPO / "docs" / "performance.md").read_text()
KUBERNETES_DOC = (REPO / "docs" / "kubernetes.md").read_text()
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def quantity(value) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * UNITS[unit]


def training_peak_bytes() -> float:
    """The largest peak RSS of the training-memory table (128 px, batch 256)."""
    section = PERFORMANCE.split("## Training memory and throughput", 1)[1].split("\n## ", 1)[0]
    peaks = [float(m) for m in re.findall(r"^\| [\d ]+ \| ([\d.]+) GB \|", section, re.MULTILINE)]
    assert len(peaks) >= 3, "docs/performance.md: training memory table not found"
    return max(peaks) * 1e9


def predictor_peak_bytes() -> float:
    """The largest RSS peak the serving benchmarks measured on the loaded server (MB)."""
    peaks = [float(m.replace(",", "")) for m in re.findall(r"([\d,]+) MB peak", PERFORMANCE)]
    peaks += [float(m) for m in re.findall(r"RSS peak ≤ (\d+) MB", PERFORMANCE)]
    assert peaks, "docs/performance.md: no predictor RSS peak found"
    return max(peaks) * 1e6


def request(objects, component: str, name: str) -> float:
    views = [v for v in pod_views(objects) if v.labels.get("app.kubernetes.io/component") == component]
    assert views, component
    return quantity(next(c for c in containers(views[0].spec) if c["name"] == name)["resources"]["requests"]["memory"])


@pytest.mark.parametrize("values", [None, KIND], ids=["defaults", "kind"])
def test_memory_requests_cover_the_measured_peaks(tools, values):
    objects = render(tools, values)
    assert request(objects, "training", "train") >= training_peak_bytes(), "training request < measured peak (128 px)"
    assert request(objects, "predictor", "kserve-container") >= predictor_peak_bytes(), \
        "predictor request < measured RSS peak"


def test_kind_scenario_fits_two_workers_of_the_documented_machine(tools):
    """kind nodes report the host's memory; the control plane is tainted (no workloads), so the
    two workers hold every pod. Worst case: the training, the predictor at maxReplicas plus the
    rollout's surge pod, MinIO, MLflow, provisioning, and the add-ons' requests."""
    machine_gb = int(re.search(r"\| Machine \| \d+ CPUs, (\d+) GB RAM", KUBERNETES_DOC).group(1))
    node = machine_gb * 1e9
    objects = render(tools, KIND)
    predictor = next(o for o in objects if o["kind"] == "InferenceService")["spec"]["predictor"]
    replicas = predictor["maxReplicas"] + 1
    ours = [request(objects, "training", "train"), request(objects, "minio", "minio"),
            request(objects, "mlflow", "mlflow"), request(objects, "minio-provisioning", "mc"),
            *[request(objects, "predictor", "kserve-container")] * replicas]
    # kube-prometheus-stack values (Prometheus 512Mi, Grafana 128Mi, Alertmanager 32Mi), KServe's
    # controller, cert-manager, metrics-server: 1.5 GiB is a generous allowance for them all.
    addons = 1.5 * 2**30
    assert max(ours) < node, "the largest pod must fit one worker"
    assert sum(ours) + addons <= 2 * node, f"{(sum(ours) + addons) / 1e9:.1f} GB of requests on 2 x {machine_gb} GB"
