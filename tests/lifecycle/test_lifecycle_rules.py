"""The lifecycle's rules on their own, without servers: the gate's decision, what a model URI
resolves to (a local store with a real pointer), the champion pointer against hostile content,
and how a rollout's progress is read from the objects KServe and Kubernetes report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rakuten_common.artifacts import ArtifactError
from rakuten_common.bundle import MANIFEST_FILE
from rakuten_common.champion import (
    CHAMPION_FILE,
    MAX_POINTER_BYTES,
    ChampionPointer,
    PointerError,
    parse_pointer,
    read_pointer,
    write_pointer,
)
from rakuten_common.model_uri import (
    RegistryRef,
    parse_registry_uri,
    resolve_model_uri,
    split_version_uri,
)
from rakuten_common.storage import open_store
from training_job.promotion import kserve_status as ks
from training_job.promotion.gate import Decision, GatePolicy, Score, decide

POLICY = GatePolicy(tolerance=0.01, recall_floor=0.2, min_class_support=5)


def score(f1: float, recall: dict[int, float], support: int = 10) -> Score:
    return Score(f1, f1, f1, recall, {code: support for code in recall}, support * len(recall))


# ---- the gate ---------------------------------------------------------------------------------

def test_first_model_is_promoted_without_a_champion():
    assert decide(score(0.3, {10: 0.1}), None, POLICY).promote


@pytest.mark.parametrize("challenger, promote", [(0.80, True), (0.795, True), (0.789, False), (0.85, True)])
def test_weighted_f1_within_the_tolerance(challenger, promote):
    decision = decide(score(challenger, {10: 0.9}), score(0.80, {10: 0.9}), POLICY)
    assert decision.promote is promote
    assert f"{challenger:.4f} vs champion 0.8000" in decision.reason


def test_a_collapsing_class_refuses_even_a_better_model():
    decision = decide(score(0.90, {10: 0.95, 40: 0.05}), score(0.80, {10: 0.7, 40: 0.6}), POLICY)
    assert decision == Decision(False, decision.reason, (40,)) and "40 (0.05 vs 0.60)" in decision.reason


def test_a_class_the_champion_already_misses_does_not_block():
    assert decide(score(0.90, {10: 0.95, 40: 0.10}), score(0.80, {10: 0.7, 40: 0.05}), POLICY).promote


def test_classes_with_few_evaluation_rows_are_not_held_to_the_floor():
    assert decide(score(0.90, {10: 0.0}, support=4), score(0.80, {10: 1.0}, support=4), POLICY).promote


# ---- the champion pointer and model URIs -------------------------------------------------------

def version(store: Path, name: str, complete: bool = True) -> Path:
    folder = store / name
    folder.mkdir(parents=True)
    if complete:
        (folder / MANIFEST_FILE).write_text("{}")
    return folder


def test_a_prefix_means_its_champion_else_its_newest(tmp_path):
    store = tmp_path / "rakuten-classifier"
    version(store, "20260101T000000Z")
    version(store, "20260201T000000Z")
    assert resolve_model_uri(str(store)) == str(store)  # no pointer: fetch picks the newest
    write_pointer(open_store(store), ChampionPointer("20260101T000000Z", str(store / "20260101T000000Z"), "1"))
    assert resolve_model_uri(str(store)) == f"{store}/20260101T000000Z"
    assert resolve_model_uri(f"{store}/") == f"{store}/20260101T000000Z"  # the chart's unpinned form
    assert resolve_model_uri(f"{store}/20260201T000000Z") == f"{store}/20260201T000000Z"  # a version: itself
    assert read_pointer(open_store(store)).registry_version == "1"


def test_a_pointer_to_an_incomplete_version_is_an_error_not_a_fallback(tmp_path):
    store = tmp_path / "models"
    version(store, "20260101T000000Z")
    version(store, "20260301T000000Z", complete=False)
    write_pointer(open_store(store), ChampionPointer("20260301T000000Z", "x"))
    with pytest.raises(ArtifactError, match="names version 20260301T000000Z, which has no manifest.json"):
        resolve_model_uri(str(store))


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"version": "../../etc", "uri": "x"}).encode(), "invalid version"),
    (json.dumps({"version": 7, "uri": "x"}).encode(), "needs string fields"),
    (b" " * (MAX_POINTER_BYTES + 1), "more than"),
])
def test_a_hostile_pointer_is_refused_with_its_reason(tmp_path, content, problem):
    with pytest.raises(PointerError, match=problem):
        parse_pointer(content, "champion.json")
    store = tmp_path / "models"
    version(store, "20260101T000000Z")
    (store / CHAMPION_FILE).write_bytes(content)
    with pytest.raises(ArtifactError):
        resolve_model_uri(str(store))


@pytest.mark.parametrize("uri, ref", [
    ("models:/rakuten-classifier@champion", RegistryRef("rakuten-classifier", alias="champion")),
    ("models:/rakuten-classifier/12", RegistryRef("rakuten-classifier", version="12")),
])
def test_registry_uris(uri, ref):
    assert parse_registry_uri(uri) == ref and str(ref) == uri


@pytest.mark.parametrize("uri", ["models:/", "models:/a@", "models:/a/b/c", "models:/a/latest", "models:/a@x/y",
                                 "models:/../x@champion"])
def test_malformed_registry_uris_are_refused(uri):
    with pytest.raises(ArtifactError, match="not a registry model URI"):
        resolve_model_uri(uri)


def test_split_version_uri():
    assert split_version_uri("s3://b/p/20260101T000000Z") == ("s3://b/p", "20260101T000000Z")
    with pytest.raises(ArtifactError):
        split_version_uri("s3://b/p/..")


# ---- reading a rollout's progress --------------------------------------------------------------

def deployment(annotation: str | None, updated: int, available: int, replicas: int, progressing=("True", "")):
    return {"metadata": {"generation": 3}, "spec": {"replicas": 1, "template": {"metadata": {
        "annotations": {ks.ANNOTATION: annotation} if annotation else {}}}},
        "status": {"observedGeneration": 3, "updatedReplicas": updated, "availableReplicas": available,
                   "replicas": replicas,
                   "conditions": [{"type": "Progressing", "status": progressing[0], "reason": progressing[1]}]}}


def pod(annotation: str, waiting: str | None) -> dict:
    state = {"waiting": {"reason": waiting, "message": "back-off 40s"}} if waiting else {"running": {}}
    return {"metadata": {"name": "p", "annotations": {ks.ANNOTATION: annotation}},
            "status": {"containerStatuses": [{"name": "kserve-container", "state": state}]}}


def test_standard_progress():
    assert "does not exist" in ks.standard_progress(None, "v2", []).waiting
    assert "has not yet put" in ks.standard_progress(deployment("v1", 1, 1, 1), "v2", []).waiting
    assert not ks.standard_progress(deployment("v2", 1, 1, 2), "v2", []).done  # an old pod still there
    assert ks.standard_progress(deployment("v2", 1, 1, 1, ("True", "NewReplicaSetAvailable")), "v2", []).done
    assert ks.standard_progress(deployment(None, 1, 1, 1), None, []).done  # annotation removed: pointer again
    stuck = ks.standard_progress(deployment("v2", 1, 0, 2, ("False", "ProgressDeadlineExceeded")), "v2", [])
    assert "ProgressDeadlineExceeded" in stuck.failed


def test_a_new_pod_that_cannot_start_fails_the_rollout_at_once():
    pods = [pod("v1", None), pod("v2", "CrashLoopBackOff")]
    progress = ks.standard_progress(deployment("v2", 1, 0, 2), "v2", pods)
    assert progress.failed and "CrashLoopBackOff" in progress.failed
    assert ks.pod_failure([pod("v1", "CrashLoopBackOff")], "v2") is None  # an old pod's trouble is not ours


def knative(created, ready, traffic, condition=("True", "")):
    return {"status": {"conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "PredictorConfigurationReady", "status": condition[0],
                                       "reason": condition[1]}],
                       "components": {"predictor": {"latestCreatedRevision": created, "latestReadyRevision": ready,
                                                    "traffic": traffic}}}}


def test_knative_progress():
    assert "no new revision" in ks.knative_progress(knative("r1", "r1", []), "r1", 20).waiting
    assert "not ready" in ks.knative_progress(knative("r2", "r1", []), "r1", 20).waiting
    canary = [{"revisionName": "r2", "percent": 20, "tag": "latest"}, {"revisionName": "r1", "percent": 80}]
    assert ks.knative_progress(knative("r2", "r2", canary), "r1", 20).done
    assert not ks.knative_progress(knative("r2", "r2", canary), "r1", 100).done
    failed = ks.knative_progress(knative("r2", "r1", [], ("False", "RevisionFailed")), "r1", 20)
    assert "RevisionFailed" in failed.failed
    assert ks.deployment_mode({"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Serverless"}}}) \
        == "Knative"
