"""Versioned publishing and fetching, against a local folder and the real S3 API server."""
from __future__ import annotations

import json
import os

import pytest

from rakuten_common.artifacts import (
    ArtifactError,
    ensure_new_version,
    fetch,
    publish,
    resolve_version,
)
from rakuten_common.bundle import MANIFEST_FILE, Manifest
from rakuten_common.storage import LocalStore, StorageError, open_store
from tests.support.s3 import BUCKET


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


def test_a_failed_publish_may_be_retried_under_the_same_version(bundle, model_uri, caplog):
    """A Job retried with a fixed MODEL_VERSION after a failed publish: the leftovers are replaced,
    while a complete version still is never overwritten."""
    store = open_store(model_uri)
    store.put_file("v2/model.keras", bundle / "labels.json")  # a leftover of the failed attempt, other bytes
    store.put_file("v2/stale.bin", bundle / "labels.json")    # and a file the new bundle does not have
    assert ensure_new_version(store, "v2") is True  # incomplete: may be reused
    publish(bundle, model_uri, manifest("v2"), progress=lambda _: None)
    assert "its 2 leftover object(s) are replaced" in caplog.text
    assert sorted(o.key.split("/", 1)[1] for o in store.list_objects("v2")) == [
        "labels.json", MANIFEST_FILE, "model.keras"]
    assert resolve_version(store) == "v2"
    with pytest.raises(ArtifactError, match="already exists .* never overwritten"):
        ensure_new_version(store, "v2")
    with pytest.raises(ArtifactError, match="already exists"):
        publish(bundle, model_uri, manifest("v2"), progress=lambda _: None)


def test_a_tampered_file_fails_verification(bundle, s3_env, s3_client, tmp_path):
    uri = f"s3://{BUCKET}/tamper-{tmp_path.name}"
    publish(bundle, uri, manifest("v1"), progress=lambda _: None)
    s3 = s3_client
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


def test_manifest_lists_a_checksum_per_file(bundle, s3_env, s3_client, tmp_path):
    prefix = f"sums-{tmp_path.name}"
    publish(bundle, f"s3://{BUCKET}/{prefix}", manifest("v1"), progress=lambda _: None)
    body = json.loads(s3_client.get_object(Bucket=BUCKET, Key=f"{prefix}/v1/{MANIFEST_FILE}")["Body"].read())
    assert {name: len(entry["sha256"]) for name, entry in body["files"].items()} == {
        "model.keras": 64, "labels.json": 64}


def test_missing_model_and_bad_uris_are_clear_errors(tmp_path, s3_env):
    with pytest.raises(ArtifactError, match="no complete model version"):
        fetch(str(tmp_path / "empty"), tmp_path / "cache")
    with pytest.raises(ArtifactError, match="NoSuchBucket|does not exist|failed"):
        fetch("s3://no-such-bucket/x", tmp_path / "cache")
    with pytest.raises(StorageError, match="unsupported storage URI"):
        open_store("gs://bucket/x")


# -- what a store holds is hostile -------------------------------------------------------------------
def write_version(root, version: str, manifest_text: str | None = None, files: dict | None = None):
    folder = root / version
    folder.mkdir(parents=True)
    for name, data in (files or {"model.keras": b"w"}).items():
        (folder / name).write_bytes(data)
    if manifest_text is not None:
        (folder / MANIFEST_FILE).write_text(manifest_text)
    return folder


def manifest_json(version: str, created: str = "2026-01-01T00:00:00Z", files: dict | None = None, **extra) -> str:
    import hashlib

    files = files if files is not None else {"model.keras": b"w"}
    entries = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()}
    return json.dumps({"version": version, "created_at": created, "files": entries, **extra})


def test_newest_is_by_created_at_not_by_name(tmp_path):
    root = tmp_path / "store"
    write_version(root, "p128", manifest_json("p128", "2026-01-01T00:00:00Z"))
    write_version(root, "20990101T000000Z", manifest_json("20990101T000000Z", "2025-06-01T00:00:00Z"))
    assert resolve_version(open_store(str(root))) == "p128"
    assert fetch(str(root), tmp_path / "cache", progress=lambda _: None)[1].version == "p128"


@pytest.mark.parametrize("text, problem", [
    ('{"version": "v2", "created_at": "2026-02-01T00:00:00Z", "fi', "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"version": "v2", "files": {}}', "created_at"),
    ('{"version": "../victim", "created_at": "2026-02-01T00:00:00Z", "files": {}}', "invalid version name"),
    ('{"version": "v2", "created_at": "yesterday", "files": {}}', "ISO 8601"),
    ('{"version": "v2", "created_at": "2026-02-01T00:00:00Z", "files": {"../escape.txt": '
     '{"sha256": "' + "0" * 64 + '", "bytes": 1}}}', "unsafe storage key"),
    ('{"version": "v2", "created_at": "2026-02-01T00:00:00Z", "files": {"model.keras": {"sha256": 5}}}', "sha256"),
])
def test_a_corrupt_newest_manifest_falls_back_or_fails_clearly(tmp_path, text, problem):
    root = tmp_path / "store"
    write_version(root, "v1", manifest_json("v1", "2026-01-01T00:00:00Z"))
    write_version(root, "v2", text)
    _, got = fetch(str(root), tmp_path / "cache", progress=lambda _: None)
    assert got.version == "v1"  # the default policy: the previous good version
    with pytest.raises(ArtifactError, match=problem):
        fetch(str(root), tmp_path / "cache", progress=lambda _: None, fallback="none")


def test_a_manifest_naming_another_version_is_refused(tmp_path):
    root = tmp_path / "store"
    write_version(root, "v2", manifest_json("v1"))
    with pytest.raises(ArtifactError, match="names version 'v1'"):
        fetch(str(root), tmp_path / "cache", progress=lambda _: None, fallback="none")


def test_an_extended_manifest_is_accepted(tmp_path):
    root = tmp_path / "store"
    write_version(root, "v1", manifest_json("v1", promoted=True, stage="production"))
    assert fetch(str(root), tmp_path / "cache", progress=lambda _: None)[1].version == "v1"


def test_a_checksum_mismatch_in_the_newest_version_falls_back(tmp_path):
    root = tmp_path / "store"
    write_version(root, "v1", manifest_json("v1", "2026-01-01T00:00:00Z"))
    folder = write_version(root, "v2", manifest_json("v2", "2026-02-01T00:00:00Z"))
    (folder / "model.keras").write_bytes(b"tampered")
    assert fetch(str(root), tmp_path / "cache", progress=lambda _: None)[1].version == "v1"
    with pytest.raises(ArtifactError, match="v2 .*unusable.*sha256"):
        fetch(str(root), tmp_path / "cache", progress=lambda _: None, fallback="none")


def test_names_from_s3_never_escape_the_cache(s3_env, s3_client, tmp_path):
    """A manifest whose version is ``../victim`` and a file key ``../escape.txt``: nothing written outside."""
    s3 = s3_client
    prefix = f"evil-{tmp_path.name}"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/v1/{MANIFEST_FILE}",
                  Body=manifest_json("../victim").encode())
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/v2/{MANIFEST_FILE}", Body=json.dumps({
        "version": "v2", "created_at": "2026-01-01T00:00:00Z",
        "files": {"../escape.txt": {"sha256": "0" * 64, "bytes": 1}}}).encode())
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/v2/../escape.txt", Body=b"x")
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match="no usable model version"):
        fetch(f"s3://{BUCKET}/{prefix}", cache, progress=lambda _: None)
    assert (victim / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "escape.txt").exists()
    assert all(p.is_relative_to(cache) for p in cache.rglob("*"))


def test_an_unreachable_s3_endpoint_fails_fast_with_logged_retries(tmp_path, monkeypatch, caplog):
    """A listening socket that never answers (a black hole): bounded timeouts, retries logged."""
    import socket
    import time

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(100)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{hole.getsockname()[1]}")
    for key, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "S3_READ_TIMEOUT": "1",
                       "S3_CONNECT_TIMEOUT": "1", "S3_MAX_ATTEMPTS": "3"}.items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    try:
        with pytest.raises(ArtifactError, match="failed after 3 attempts"):
            fetch("s3://bucket/prefix", tmp_path / "cache", progress=lambda _: None)
    finally:
        hole.close()
    assert time.monotonic() - started < 20
    assert len([r for r in caplog.records if "retrying in" in r.getMessage()]) == 2


def test_gc_lists_then_deletes_only_old_orphans(bundle, model_uri, tmp_path):
    from rakuten_common import gc

    publish(bundle, model_uri, manifest("v1"), progress=lambda _: None)
    store = open_store(model_uri)
    store.put_file("v2/model.keras", bundle / "model.keras")  # a publish killed half-way
    assert gc.find_orphans(store, min_age_hours=1) == []  # too recent: might be in progress
    orphans = gc.find_orphans(store, min_age_hours=1, now=time_in_hours(2))
    assert [o.version for o in orphans] == ["v2"]
    assert gc.main(["--model-uri", model_uri, "--min-age-hours", "0"]) == 0
    assert store.has_prefix("v2")  # a dry run by default
    assert gc.main(["--model-uri", model_uri, "--min-age-hours", "0", "--delete"]) == 0
    assert not store.has_prefix("v2") and resolve_version(store) == "v1"


def time_in_hours(hours: float) -> float:
    import time

    return time.time() + hours * 3600


def test_a_local_store_named_by_a_relative_path_lists_its_keys(tmp_path, monkeypatch):
    """``open_store("results/x")`` as the make targets give it: keys come back relative to the store
    (the data-loop demo's review queue once failed on this)."""
    monkeypatch.chdir(tmp_path)
    store = open_store("results/captures")
    store.put_bytes("captures/date=2026-12-04/pod-000000.jsonl.gz", b"x")
    assert [o.key for o in store.list_objects("captures")] == ["captures/date=2026-12-04/pod-000000.jsonl.gz"]
    assert store.delete_prefix("captures") == 1


def test_a_local_store_does_not_list_a_write_in_progress(tmp_path):
    """Like S3, an object is listed once it is complete: a reader polling the listing (the capture
    tests, the review queue) must never see the hidden file a write goes through (CI once did)."""
    store = open_store(str(tmp_path))
    store.put_bytes("captures/a.jsonl.gz", b"done")
    in_progress = tmp_path / "captures" / f".b.jsonl.gz.{os.getpid()}.1.partial"
    in_progress.write_bytes(b"half")
    assert [o.key for o in store.list_objects("captures")] == ["captures/a.jsonl.gz"]
    store.put_file("captures/c.bin", in_progress)
    assert [o.key for o in store.list_objects("captures")] == ["captures/a.jsonl.gz", "captures/c.bin"]
    assert not [p for p in (tmp_path / "captures").iterdir() if p.name.startswith(".") and "c.bin" in p.name]
