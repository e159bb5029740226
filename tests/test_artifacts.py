"""Versioned publishing and fetching, against a local folder and the real S3 API server."""
from __future__ import annotations

import json

import boto3
import pytest

from rakuten_common.artifacts import ArtifactError, fetch, publish, resolve_version
from rakuten_common.bundle import MANIFEST_FILE, Manifest
from rakuten_common.storage import LocalStore, StorageError, open_store
from tests.conftest import BUCKET


@pytest.fixture
def bundle(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"weights" * 1000)
    (folder / "labels.json").write_text('{"prdtypecodes": [10, 40]}')
    return folder


def manifest(version: str) -> Manifest:
    return Manifest(version=version, created_at="2026-11-29T00:00:00Z", metrics={"weighted_f1": 0.9})


@pytest.fixture(params=["local", "s3"])
def model_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store" / "rakuten-classifier")
    request.getfixturevalue("s3_env")
    return f"s3://{BUCKET}/artifacts-test-{tmp_path.name}"


def test_publish_then_fetch_the_newest_complete_version(bundle, model_uri, tmp_path):
    publish(bundle, model_uri, manifest("20260101T000000Z"), progress=lambda _: None)
    uri = publish(bundle, model_uri, manifest("20260102T000000Z"), progress=lambda _: None)
    assert uri.endswith("/20260102T000000Z")
    local, got = fetch(model_uri, tmp_path / "cache", progress=lambda _: None)
    assert got.version == "20260102T000000Z" and got.metrics == {"weighted_f1": 0.9}
    assert set(got.files) == {"model.keras", "labels.json"}
    assert (local / "model.keras").read_bytes() == (bundle / "model.keras").read_bytes()
    one_version, pinned = fetch(f"{model_uri}/20260101T000000Z", tmp_path / "cache2", progress=lambda _: None)
    assert pinned.version == "20260101T000000Z"


def test_an_existing_version_is_never_overwritten(bundle, model_uri):
    publish(bundle, model_uri, manifest("v1"), progress=lambda _: None)
    with pytest.raises(ArtifactError, match="already exists"):
        publish(bundle, model_uri, manifest("v1"), progress=lambda _: None)


class FailingStore(LocalStore):
    """Test double: a store whose connection drops after the first file (failure injection)."""

    def __init__(self, root):
        super().__init__(root)
        self.puts = 0

    def put_file(self, key, source):
        self.puts += 1
        if self.puts > 1:
            raise StorageError("connection reset")
        super().put_file(key, source)


def test_an_interrupted_upload_leaves_no_loadable_version(bundle, tmp_path, monkeypatch):
    root = tmp_path / "store"
    publish(bundle, str(root), manifest("v1"), progress=lambda _: None)
    failing = FailingStore(root)
    monkeypatch.setattr("rakuten_common.artifacts.open_store", lambda uri: failing)
    with pytest.raises(StorageError):
        publish(bundle, str(root), manifest("v2"), progress=lambda _: None)
    monkeypatch.undo()
    assert (root / "v2").exists() and not (root / "v2" / MANIFEST_FILE).exists()
    assert resolve_version(open_store(str(root))) == "v1"  # the half-written v2 is ignored
    with pytest.raises(ArtifactError, match="already exists"):
        publish(bundle, str(root), manifest("v2"), progress=lambda _: None)


def test_a_tampered_file_fails_verification(bundle, s3_env, tmp_path):
    uri = f"s3://{BUCKET}/tamper-{tmp_path.name}"
    publish(bundle, uri, manifest("v1"), progress=lambda _: None)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key=f"tamper-{tmp_path.name}/v1/model.keras", Body=b"evil")
    with pytest.raises(ArtifactError, match="model.keras.*sha256"):
        fetch(uri, tmp_path / "cache", progress=lambda _: None)


class RecordingStore(LocalStore):
    """Test double: a local store that records the order of uploads."""

    def __init__(self, root):
        super().__init__(root)
        self.keys = []

    def put_file(self, key, source):
        self.keys.append(key)
        super().put_file(key, source)


def test_manifest_is_written_last(bundle, tmp_path, monkeypatch):
    store = RecordingStore(tmp_path / "store")
    monkeypatch.setattr("rakuten_common.artifacts.open_store", lambda uri: store)
    publish(bundle, "ignored", manifest("v1"), progress=lambda _: None)
    assert store.keys[-1] == f"v1/{MANIFEST_FILE}" and len(store.keys) == 3


def test_manifest_lists_a_checksum_per_file(bundle, s3_env, tmp_path):
    prefix = f"sums-{tmp_path.name}"
    publish(bundle, f"s3://{BUCKET}/{prefix}", manifest("v1"), progress=lambda _: None)
    body = json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=f"{prefix}/v1/{MANIFEST_FILE}")["Body"].read())
    assert {name: len(entry["sha256"]) for name, entry in body["files"].items()} == {
        "model.keras": 64, "labels.json": 64}


def test_missing_model_and_bad_uris_are_clear_errors(tmp_path, s3_env):
    with pytest.raises(ArtifactError, match="no complete model version"):
        fetch(str(tmp_path / "empty"), tmp_path / "cache")
    with pytest.raises(ArtifactError, match="NoSuchBucket|does not exist|failed"):
        fetch("s3://no-such-bucket/x", tmp_path / "cache")
    with pytest.raises(StorageError, match="unsupported storage URI"):
        open_store("gs://bucket/x")
