"""The model lifecycle on a real kind cluster (``make cluster-up`` first; ``make e2e`` runs it).

1. First install: the training Job made the first champion and the predictor serves it (the V2
   answer's ``model_version`` is the registry's champion, read through MLflow's REST API).
2. ``helm upgrade`` with a deliberately worse training (1 epoch on 300 rows): the Job's gate
   refuses (Event ``PromotionRefused``), and the served version is still the champion — the
   upgrade itself changed nothing either.
3. ``helm upgrade`` with a good training (tolerance 0.05, to absorb the noise of retraining the
   same configuration): promoted, rolled out (Event ``ModelRolledOut``), the V2 answers carry the
   new ``model_version``, and a light load running through the rollout sees no failed request.

Skipped unless a cluster answers on ``KUBE_CONTEXT`` (``kind-rakuten``) with the chart installed
as ``RELEASE`` in ``NAMESPACE``. Settings as ``scripts/e2e.sh`` (the Makefile passes them):
KUBECTL, HELM, KUBE_CONTEXT, NAMESPACE, RELEASE, MODEL_URL, MLFLOW_URL, TRAIN_TIMEOUT.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rakuten_common.model_uri import registry_storage_uri
from training_job.promotion.smoke import call

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
KUBECTL = os.environ.get("KUBECTL") or (str(TOOLS / "kubectl") if (TOOLS / "kubectl").exists() else "kubectl")
HELM = os.environ.get("HELM") or (str(TOOLS / "helm") if (TOOLS / "helm").exists() else "helm")
CONTEXT = os.environ.get("KUBE_CONTEXT", "kind-rakuten")
NAMESPACE = os.environ.get("NAMESPACE", "rakuten")
RELEASE = os.environ.get("RELEASE", "rakuten-serving")
MODEL_URL = os.environ.get("MODEL_URL", "http://127.0.0.1:30080")
MLFLOW_URL = os.environ.get("MLFLOW_URL", "http://127.0.0.1:30500")
TRAIN_TIMEOUT = float(os.environ.get("TRAIN_TIMEOUT", "2400"))
CHART = REPO / "charts" / "rakuten-serving"

pytestmark = [pytest.mark.kind, pytest.mark.timeout(3 * 3600)]


def kubectl(*args: str, check: bool = True) -> str:
    done = subprocess.run([KUBECTL, "--context", CONTEXT, "-n", NAMESPACE, *args], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def cluster_ready() -> str | None:
    try:
        done = subprocess.run([KUBECTL, "--context", CONTEXT, "-n", NAMESPACE, "get", "inferenceservices", "-o", "name"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0 or not done.stdout.strip():
        return f"no InferenceService in {CONTEXT}/{NAMESPACE}: {done.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = cluster_ready()
    if problem:
        pytest.skip(f"no kind cluster with the chart installed ({problem}): make cluster-up first")


def isvc_name() -> str:
    return kubectl("get", "inferenceservices", "-o", "jsonpath={.items[0].metadata.name}")


def champion_version() -> str:
    return registry_storage_uri("models:/rakuten-classifier@champion", MLFLOW_URL).rstrip("/").rsplit("/", 1)[1]


def events(reason: str) -> list[dict]:
    items = json.loads(kubectl("get", "events", "-o", "json",
                               "--field-selector", f"involvedObject.kind=InferenceService,reason={reason}"))["items"]
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def wait_for_latest_training_job(previous: set[str]) -> str:
    """The training Job the last install/upgrade created, once complete (fails if it failed)."""
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while time.monotonic() < deadline:
        jobs = json.loads(kubectl("get", "jobs", "-l", "app.kubernetes.io/component=training", "-o", "json"))["items"]
        new = [j for j in jobs if j["metadata"]["name"] not in previous]
        for job in new:
            conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}
            if conditions.get("Complete") == "True":
                return job["metadata"]["name"]
            assert conditions.get("Failed") != "True", kubectl("logs", f"job/{job['metadata']['name']}", "-c", "train",
                                                               "--tail", "60", check=False)
        time.sleep(15)
    raise TimeoutError(f"no training Job completed within {TRAIN_TIMEOUT:.0f} s")


def training_jobs() -> set[str]:
    return set(kubectl("get", "jobs", "-l", "app.kubernetes.io/component=training", "-o",
                       "jsonpath={.items[*].metadata.name}").split())


def upgrade(*sets: str) -> None:
    done = subprocess.run([HELM, "--kube-context", CONTEXT, "upgrade", RELEASE, str(CHART), "-n", NAMESPACE,
                           "--reuse-values", *[arg for s in sets for arg in ("--set", s)]],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


class Load(threading.Thread):
    """One client calling the predictor back to back: versions answered, failed requests."""

    def __init__(self):
        super().__init__(daemon=True)
        self.answers, self.failures, self.running = [], [], True

    def run(self):
        while self.running:
            version, problem = call(MODEL_URL)
            (self.answers if version else self.failures).append(version or problem)
            time.sleep(0.2)


def test_first_install_serves_the_champion():
    assert call(MODEL_URL)[0] == champion_version()
    assert events("ModelPromoted"), "the first training's gate made no champion"


def test_a_worse_training_is_refused_and_the_champion_still_served():
    served, refusals = champion_version(), len(events("PromotionRefused"))
    before = training_jobs()
    upgrade("training.epochs=1", "training.extraArgs={--max-rows,300}")
    wait_for_latest_training_job(before)
    assert len(events("PromotionRefused")) == refusals + 1
    assert champion_version() == served and call(MODEL_URL)[0] == served


def test_a_better_training_is_rolled_out_without_a_failed_request():
    served = champion_version()
    before = training_jobs()
    load = Load()
    load.start()
    try:
        upgrade("training.epochs=12", "training.extraArgs=null", "training.promotion.tolerance=0.05")
        wait_for_latest_training_job(before)
    finally:
        load.running = False
        load.join(30)
    new = champion_version()
    assert new != served and call(MODEL_URL)[0] == new
    assert events("ModelRolledOut")[-1]["message"].startswith("registry version")
    assert load.failures == [], load.failures[:5]
    assert load.answers[-1] == new
    print(f"rollout under load: {len(load.answers)} answers, {len(load.failures)} failed; "
          f"{events('ModelRolledOut')[-1]['message']}")
