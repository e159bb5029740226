"""Chart values of inference capture (predictor.capture.*), rendered by the real helm: off by
default, on in the kind values, the env of the server container, the schema's refusals, the
capture bucket created, and the predictor's MinIO user allowed to create objects under the
capture prefix only (enforced by moto with IAM policies, MinIO's stand-in)."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.helm import (
    CHART,
    by_kind,
    container,
    env_of,
    one,
    render,
    server_container,
    template_args,
    views_by_component,
)
from tests.test_chart_storage_access import allowed, iam_s3, provision  # noqa: F401 - iam_s3 is a fixture

pytestmark = pytest.mark.helm
KIND_VALUES = CHART / "ci" / "kind-values.yaml"
CAPTURE_ENV = ("CAPTURE_URI", "CAPTURE_SAMPLE_RATE", "CAPTURE_CONTENT", "POD_NAME")


def server_env(objects) -> dict:
    return {e["name"]: e for e in server_container(one(objects, "InferenceService"))["env"]}


def predictor_policy(objects) -> dict:
    policies = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-minio-policies"))
    return json.loads(policies["data"]["predictor.json"])


def buckets(objects) -> list[str]:
    return env_of(container(views_by_component(objects)["minio-provisioning"][0], "mc"))["BUCKETS"].split()


def test_capture_is_off_by_default(tools):
    objects = render(tools)
    env = server_env(objects)
    assert not set(CAPTURE_ENV) & set(env)
    assert not any("s3:PutObject" in s["Action"] for s in predictor_policy(objects)["Statement"])


def test_capture_is_on_in_the_kind_values(tools):
    objects = render(tools, KIND_VALUES)
    env = server_env(objects)
    assert env["CAPTURE_URI"]["value"] == "s3://rakuten-datasets/inference"
    assert env["CAPTURE_SAMPLE_RATE"]["value"] == "0.1" and env["CAPTURE_CONTENT"]["value"] == "full"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "rakuten-datasets" in buckets(objects)


def test_values_reach_the_server_and_the_bucket_is_created(tools):
    objects = render(tools, sets=["predictor.capture.uri=s3://shop-captures/eu", "predictor.capture.sampleRate=1",
                                  "predictor.capture.content=hashes"])
    env = server_env(objects)
    assert (env["CAPTURE_URI"]["value"], env["CAPTURE_SAMPLE_RATE"]["value"], env["CAPTURE_CONTENT"]["value"]) == \
        ("s3://shop-captures/eu", "1", "hashes")
    assert buckets(objects)[-1] == "shop-captures"
    put = [s for s in predictor_policy(objects)["Statement"] if s["Action"] == ["s3:PutObject"]]
    assert put == [{"Action": ["s3:PutObject"], "Effect": "Allow", "Resource": ["arn:aws:s3:::shop-captures/eu/*"]}]


@pytest.mark.parametrize("capture, message", [
    ({"sampleRate": 1.5}, "maximum"),
    ({"sampleRate": -0.1}, "minimum"),
    ({"content": "all"}, "full"),
    ({"uri": "http://minio:9000/captures"}, "does not match pattern"),
])
def test_the_schema_refuses_bad_values(tools, tmp_path, capture, message):
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps({"predictor": {"capture": capture}}))  # JSON is YAML: numbers stay numbers
    done = subprocess.run([tools.helm, *template_args(values)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


def test_the_predictor_may_only_create_objects_under_the_capture_prefix(tools, iam_s3):  # noqa: F811
    objects = render(tools, sets=["predictor.capture.uri=s3://rakuten-datasets/inference"])
    clients = provision(objects, iam_s3)
    predictor, training = clients["predictor"], clients["training"]
    key = "inference/captures/date=2026-12-03/pod-000000.jsonl.gz"
    assert allowed(lambda: predictor.put_object(Bucket="rakuten-datasets", Key=key, Body=b"x"))
    assert allowed(lambda: predictor.put_object(Bucket="rakuten-datasets", Key="inference/images/a.jpg", Body=b"x",
                                                IfNoneMatch="*"))
    assert not allowed(lambda: predictor.get_object(Bucket="rakuten-datasets", Key=key))
    assert not allowed(lambda: predictor.list_objects_v2(Bucket="rakuten-datasets", Prefix="inference/"))
    assert not allowed(lambda: predictor.delete_object(Bucket="rakuten-datasets", Key=key))
    assert not allowed(lambda: predictor.put_object(Bucket="rakuten-datasets", Key="rakuten/X_train_update.csv",
                                                    Body=b"x"))
    assert not allowed(lambda: predictor.put_object(Bucket="rakuten-models", Key="rakuten-classifier/x", Body=b"x"))
    assert allowed(lambda: training.get_object(Bucket="rakuten-datasets", Key=key))  # the data loop reads them
