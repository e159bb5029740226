"""Least-privilege storage access (issue 9, finding 4): only MinIO and its provisioning Job hold
the root credentials; every other component has its own user whose policy is enforced for real
by an S3 API that evaluates IAM policies (moto with authentication on, MinIO's stand-in: both
speak the AWS policy language; MinIO itself cannot be installed here)."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from rakuten_common.processes import ServerProcess, free_port
from tests.support.helm import (
    SCENARIO_IDS,
    by_kind,
    container,
    containers,
    env_of,
    one,
    pod_views,
    render,
    secret_refs,
    views_by_component,
    volume_secrets,
)

pytestmark = pytest.mark.helm

MINIO_SCENARIOS = [s for s in SCENARIO_IDS if s != "external-s3-no-monitoring"]
COMPONENTS = ("predictor", "training", "mlflow")


def root_secret_name(objects: list[dict]) -> str:
    minio = container(views_by_component(objects)["minio"][0], "minio")
    (name,) = {e["valueFrom"]["secretKeyRef"]["name"] for e in minio["env"] if e["name"].startswith("MINIO_ROOT_")}
    return name


@pytest.mark.parametrize("scenario", MINIO_SCENARIOS)
def test_only_minio_and_its_provisioning_job_hold_the_root_credentials(rendered, scenario):
    objects = rendered[scenario]
    root = root_secret_name(objects)
    holders = {view.labels["app.kubernetes.io/component"] for view in pod_views(objects)
               if root in volume_secrets(view.spec) or any(root in secret_refs(c) for c in containers(view.spec))}
    assert holders == {"minio", "minio-provisioning"}, holders


@pytest.mark.parametrize("scenario", MINIO_SCENARIOS)
def test_each_component_reads_its_own_user(rendered, scenario):
    objects = rendered[scenario]
    secrets = {s["metadata"]["name"]: s for s in by_kind(objects, "Secret")}
    expected = {"predictor": "predictor", "training": "training", "tests": None, "mlflow": "mlflow"}
    for view in pod_views(objects):
        component = view.labels["app.kubernetes.io/component"]
        if component not in expected:
            continue
        refs = set().union(*(secret_refs(c) for c in containers(view.spec)))
        if expected[component] is None:
            assert not refs, f"{view.where} needs no S3 credentials"
            continue
        if component == "predictor" and not refs:
            continue  # Knative mode: no wait-for-model; the storage initializer gets them via the ServiceAccount
        (name,) = refs
        assert name.endswith(f"-s3-{expected[component]}"), (view.where, name)
        user = base64.b64decode(secrets[name]["data"]["AWS_ACCESS_KEY_ID"]).decode()
        assert user == f"rakuten-serving-{expected[component]}"
    isvc = one(objects, "InferenceService")
    account = isvc["spec"]["predictor"]["serviceAccountName"]
    sa = next(o for o in by_kind(objects, "ServiceAccount") if o["metadata"]["name"] == account)
    assert sa["secrets"][0]["name"].endswith("-s3-predictor")


def test_component_keys_are_random_and_never_the_roots(tools):
    first, second = render(tools), render(tools)
    key = {o["metadata"]["name"]: o["data"]["AWS_SECRET_ACCESS_KEY"] for o in by_kind(first, "Secret")}
    again = {o["metadata"]["name"]: o["data"]["AWS_SECRET_ACCESS_KEY"] for o in by_kind(second, "Secret")}
    assert len(key) == 4 and len(set(key.values())) == 4
    assert all(key[name] != again[name] for name in key)


def test_provisioning_job_creates_every_bucket_user_and_policy(rendered):
    objects = rendered["defaults"]
    job = views_by_component(objects)["minio-provisioning"][0]
    mc = container(job, "mc")
    env = env_of(mc)
    assert env["BUCKETS"].split() == ["rakuten-models", "rakuten-datasets", "rakuten-mlflow"]
    assert env["COMPONENTS"].split() == list(COMPONENTS)
    script = mc["args"][0]
    for command in ("mc mb --ignore-existing", "mc admin policy create", "mc admin user add", "mc admin policy attach"):
        assert command in script, command
    assert "already in effect" in script, "re-running the hook must not fail on an attached policy"
    mounted = {s["secret"]["name"] for v in job.spec["volumes"] if "projected" in v for s in v["projected"]["sources"]}
    assert mounted == {f"rakuten-rakuten-serving-s3-{c}" for c in COMPONENTS}
    policies = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-minio-policies"))
    assert set(policies["data"]) == {f"{c}.json" for c in COMPONENTS}


# ---- the policies, enforced -------------------------------------------------------------------

@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory):
    """An S3 API evaluating IAM policies: moto_server with authentication after 3 calls, which
    create the admin user that does the rest (as the root user does in MinIO)."""
    port = free_port()
    server = ServerProcess([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                           tmp_path_factory.mktemp("iam") / "moto.log", env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    url = f"http://127.0.0.1:{port}"
    server.wait_until_ready(f"{url}/moto-api/", 60)
    anonymous = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "bootstrap",
                 "aws_secret_access_key": "bootstrap"}
    iam = boto3.client("iam", **anonymous)
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    yield {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": key["AccessKeyId"],
           "aws_secret_access_key": key["SecretAccessKey"]}
    server.stop()


def provision(objects: list[dict], admin: dict) -> dict[str, object]:
    """What the provisioning Job does, with the chart's own bucket list and policy documents:
    one S3 client per component, logged in as that component's user."""
    env = env_of(container(views_by_component(objects)["minio-provisioning"][0], "mc"))
    policies = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-minio-policies"))
    s3, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
    for bucket in env["BUCKETS"].split():
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
    clients = {}
    for component in env["COMPONENTS"].split():
        user = f"{component}-{free_port()}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=component, PolicyDocument=policies["data"][f"{component}.json"])
        key = iam.create_access_key(UserName=user)["AccessKey"]
        clients[component] = boto3.client("s3", **{**admin, "aws_access_key_id": key["AccessKeyId"],
                                                   "aws_secret_access_key": key["SecretAccessKey"]})
    s3.put_object(Bucket="rakuten-models", Key="rakuten-classifier/v1/manifest.json", Body=b"{}")
    return clients


def allowed(call) -> bool:
    try:
        call()
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "AccessDenied":
            return False
        raise
    return True


def test_policies_give_each_component_exactly_its_access(rendered, iam_s3):
    clients = provision(rendered["defaults"], iam_s3)
    predictor, training, mlflow = (clients[c] for c in COMPONENTS)
    model = {"Bucket": "rakuten-models", "Key": "rakuten-classifier/v1/manifest.json"}
    # predictor: read the models (what the storage initializer and wait-for-model do), nothing else
    assert allowed(lambda: predictor.list_objects_v2(Bucket="rakuten-models", Prefix="rakuten-classifier/"))
    assert allowed(lambda: predictor.get_object(**model))
    assert allowed(lambda: predictor.list_objects_v2(Bucket="rakuten-models", MaxKeys=1))  # wait_for --bucket
    assert not allowed(lambda: predictor.put_object(Bucket="rakuten-models", Key="x", Body=b"x"))
    assert not allowed(lambda: predictor.delete_object(**model))
    assert not allowed(lambda: predictor.delete_bucket(Bucket="rakuten-models"))
    assert not allowed(lambda: predictor.list_objects_v2(Bucket="rakuten-datasets"))
    # training: read-write on models and datasets, never MLflow's bucket, never bucket deletion
    for bucket in ("rakuten-models", "rakuten-datasets"):
        assert allowed(lambda: training.put_object(Bucket=bucket, Key="t/probe", Body=b"x"))
        assert allowed(lambda: training.get_object(Bucket=bucket, Key="t/probe"))
        assert allowed(lambda: training.delete_object(Bucket=bucket, Key="t/probe"))
    assert not allowed(lambda: training.list_objects_v2(Bucket="rakuten-mlflow"))
    assert not allowed(lambda: training.delete_bucket(Bucket="rakuten-datasets"))
    # MLflow: its artifact bucket only
    assert allowed(lambda: mlflow.put_object(Bucket="rakuten-mlflow", Key="artifacts/1/x", Body=b"x"))
    assert not allowed(lambda: mlflow.get_object(**model))
    assert not allowed(lambda: mlflow.list_objects_v2(Bucket="rakuten-datasets"))


def test_a_dataset_in_another_bucket_is_provisioned_for_training(tools, iam_s3):
    objects = render(tools, sets=["training.data.uri=s3://acme-data/rakuten"])
    clients = provision(objects, iam_s3)
    assert allowed(lambda: clients["training"].put_object(Bucket="acme-data", Key="rakuten/x", Body=b"x"))
    assert not allowed(lambda: clients["predictor"].list_objects_v2(Bucket="acme-data"))
