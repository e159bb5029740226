"""The chart's side of the model lifecycle, rendered with the real helm: the training pods'
rollout RBAC (namespaced, exactly the calls the rollout makes), their promotion settings as the
promotion command parses them, the predictor pinned to one version, and the flows its
NetworkPolicies must let through."""
from __future__ import annotations

import pytest

from tests.lifecycle.conftest import ROLLOUT_API
from tests.support.helm import (
    CI_VALUES,
    by_kind,
    containers,
    env_of,
    one,
    pod_views,
    predictor_pod_labels,
    render,
)
from tests.support.netpol import address, allowed, pod
from training_job.promotion.kserve_status import ANNOTATION

pytestmark = pytest.mark.helm
SCENARIOS = {None: "defaults", **{p: p.name.removesuffix("-values.yaml") for p in CI_VALUES}}


@pytest.fixture(scope="module")
def rendered(tools) -> dict[str, list[dict]]:
    return {name: render(tools, values) for values, name in SCENARIOS.items()}


def training_views(objects):
    return [v for v in pod_views(objects) if v.labels.get("app.kubernetes.io/component") == "training"]


@pytest.mark.parametrize("scenario", SCENARIOS.values())
def test_rollout_rbac_is_namespaced_and_exactly_what_the_rollout_calls(rendered, scenario):
    objects = rendered[scenario]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    isvc = one(objects, "InferenceService")["metadata"]["name"]
    role, binding = one(objects, "Role"), one(objects, "RoleBinding")
    granted = {(group, resource, verb, tuple(rule.get("resourceNames", ())))
               for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    names = {"inferenceservices": (isvc,), "deployments": (f"{isvc}-predictor",)}
    assert granted == {(group, resource, verb, names.get(resource, ())) for *_, group, resource, verb in ROLLOUT_API}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    views = training_views(objects)
    assert views and all(v.spec["serviceAccountName"] == subject["name"] for v in views)
    others = [v for v in pod_views(objects) if v not in views]
    assert all(v.spec.get("serviceAccountName") != subject["name"] for v in others)


@pytest.mark.parametrize("scenario", SCENARIOS.values())
def test_training_env_parses_with_the_promotion_command(rendered, scenario, monkeypatch):
    from rakuten_common.options import from_args
    from training_job.promote import PromoteConfig, build_parser
    from training_job.promotion.rollout import RolloutConfig

    objects = rendered[scenario]
    isvc = one(objects, "InferenceService")
    for view in training_views(objects):
        train = next(c for c in containers(view.spec) if c["name"] == "train")
        env = env_of(train)
        assert env["PROMOTE"] == "true"
        for key, value in env.items():
            monkeypatch.setenv(key, value if value is not None else "rakuten")  # fieldRef: the pod's namespace
        args = build_parser().parse_args([])
        config, rollout = from_args(PromoteConfig, args), from_args(RolloutConfig, args)
        assert (config.tolerance, config.recall_floor, config.min_class_support) == (0.01, 0.2, 5)
        assert rollout.inference_service == isvc["metadata"]["name"] and rollout.namespace == "rakuten"
        knative = scenario == "knative"
        assert rollout.smoke_url == ("" if knative else f"http://{isvc['metadata']['name']}-predictor.rakuten.svc.cluster.local")
        assert view.spec["automountServiceAccountToken"] is True


@pytest.mark.parametrize("scenario", SCENARIOS.values())
def test_predictor_is_pinned_to_one_version_and_replaced_without_capacity_loss(rendered, scenario):
    isvc = one(rendered[scenario], "InferenceService")
    predictor = isvc["spec"]["predictor"]
    # the chart never renders the pod-template annotation: a helm upgrade leaves the rollout's pin alone
    assert ANNOTATION not in (predictor.get("annotations") or {})
    server = next(c for c in predictor["containers"] if c["name"] == "kserve-container")
    if scenario == "knative":
        assert "deploymentStrategy" not in predictor
        return
    pin = next(e for e in server["env"] if e["name"] == "MODEL_VERSION_PIN")
    assert pin["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{ANNOTATION}']"
    assert predictor["deploymentStrategy"] == {"type": "RollingUpdate",
                                               "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS.values() if s != "external-s3-no-monitoring"])
def test_training_pods_reach_the_api_server_and_the_predictor(rendered, scenario):
    objects = rendered[scenario]
    policies = by_kind(objects, "NetworkPolicy")
    training = pod(training_views(objects)[0].labels)
    predictor = pod(predictor_pod_labels(one(objects, "InferenceService")))
    api_server = address("10.96.0.1")  # the kubernetes Service (any address: apiServer.cidrs is empty)
    assert allowed(policies, training, api_server, 443) and allowed(policies, training, api_server, 6443)
    if scenario != "knative":
        assert allowed(policies, training, predictor, 8080), "training -> predictor (smoke call)"
    assert not allowed(policies, training, api_server, 8443)


def training_job(objects) -> dict:
    (job,) = [j for j in by_kind(objects, "Job") if j["metadata"]["name"].endswith("-train-1")]
    return job


def test_a_failed_rollout_is_not_retried_by_retraining(tools):
    objects = render(tools, sets=["training.cronjob.enabled=true"])
    jobs = [training_job(objects)["spec"], one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]]
    for spec in jobs:
        assert spec["podFailurePolicy"]["rules"] == [
            {"action": "FailJob", "onExitCodes": {"containerName": "train", "operator": "In", "values": [4]}}]


def test_promotion_off_leaves_no_api_access(tools):
    objects = render(tools, sets=["training.promotion.enabled=false"])
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    for view in training_views(objects):
        assert view.spec["automountServiceAccountToken"] is False
        assert env_of(next(c for c in containers(view.spec) if c["name"] == "train"))["PROMOTE"] == "false"
    assert "podFailurePolicy" not in training_job(objects)["spec"]
