"""Versioned model bundles in a store: publish one with its manifest written last, fetch and verify one.

The files of a bundle are described in ``rakuten_common.bundle``. A version whose manifest is
absent is incomplete and never loaded; a complete version is never overwritten. A version
without a manifest (a publish that failed or was killed) may be published again under the same
name: its leftover objects are removed first (a Kubernetes Job retried with a fixed
``MODEL_VERSION`` does exactly this).

What a store holds is not trusted: a manifest is parsed field by field (``read_manifest``:
a truncated or malformed one is a clear ``ArtifactError``, unknown fields are ignored), its
version must be its folder's name, every file name in it must be a safe relative path, and
files are downloaded into a fresh folder inside the cache, so nothing is ever written or
removed outside it.

Which version (``fetch`` of a prefix of versions): the newest by the manifest's
``created_at``, not by name (a version whose manifest cannot be read counts as newer than
all). While a registry is configured (``MLFLOW_TRACKING_URI`` set), only versions the
registry knows are candidates (``rakuten_common.model_uri.registered_versions``); the others
are logged and skipped. **Fallback policy** (``fallback``): if the newest version is unusable (manifest
corrupt, a file missing or not matching its checksum), ``"previous"`` (the default) logs why
and tries the next newest, and so on; ``"none"`` fails at once. A URI
naming one version never falls back. Storage that cannot be reached is never a reason to
fall back: that fails (after bounded retries, see ``rakuten_common.storage``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from rakuten_common.bundle import MANIFEST_FILE, MODEL_NAME, VERSION_PATTERN, Manifest
from rakuten_common.errors import ArtifactError
from rakuten_common.faults import kill_point
from rakuten_common.jsondoc import load_object
from rakuten_common.model_uri import registered_versions, resolve_model_uri
from rakuten_common.storage import (
    LocalStore,
    ProgressFn,
    StorageError,
    Store,
    inside,
    open_store,
    validate_key,
)

logger = logging.getLogger("rakuten.artifacts")

FALLBACK_POLICIES = ("previous", "none")
#: Size bound of a manifest (a real one is about 1 KB).
MAX_MANIFEST_BYTES = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_files(bundle: Path) -> dict[str, dict]:
    """Checksum and size of every file of a bundle folder (the manifest itself excluded)."""
    return {p.relative_to(bundle).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}


def ensure_new_version(store: Store, version: str) -> bool:
    """Raise ``ArtifactError`` if ``version`` is malformed or complete (has its manifest) already.

    Returns whether objects of an incomplete ``version`` are there (a failed publish's leftovers,
    which ``publish`` replaces)."""
    if not VERSION_PATTERN.match(version):
        raise ArtifactError(f"invalid version id {version!r}")
    if store.exists(f"{version}/{MANIFEST_FILE}"):
        raise ArtifactError(f"version {version} already exists in {store.uri}: versions are never overwritten")
    return store.has_prefix(version)


def publish(bundle: Path, uri: str, manifest: Manifest, progress: ProgressFn = print) -> str:
    """Upload ``bundle`` as ``<uri>/<manifest.version>/``; return the version's URI.

    An incomplete version of the same name (no manifest) is removed first, then replaced."""
    store = open_store(uri)
    version = manifest.version
    if ensure_new_version(store, version):
        removed = store.delete_prefix(version)
        logger.warning("version %s in %s had no %s (a failed publish): its %d leftover object(s) are replaced",
                       version, store.uri, MANIFEST_FILE, removed)
    manifest.files = describe_files(bundle)
    total = sum(entry["bytes"] for entry in manifest.files.values())
    sent = 0
    for name, entry in manifest.files.items():
        store.put_file(f"{version}/{name}", bundle / name)
        kill_point("uploaded")
        sent += entry["bytes"]
        progress(f"  uploaded {name} ({entry['bytes'] / 1e6:.2f} MB, {sent / max(total, 1):.0%} of {total / 1e6:.2f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        manifest_path = Path(tmp) / MANIFEST_FILE
        manifest_path.write_text(manifest.to_json())
        store.put_file(f"{version}/{MANIFEST_FILE}", manifest_path)
    progress(f"  wrote {MANIFEST_FILE}: version {version} is complete")
    return f"{store.uri}/{version}"


# -- reading what a store holds ------------------------------------------------------------------
def created_at(manifest: Manifest) -> datetime:
    return datetime.fromisoformat(manifest.created_at.replace("Z", "+00:00"))


def read_manifest(text: str | bytes, where: str) -> Manifest:
    """A ``Manifest`` from the text of ``manifest.json``, every field checked; ``ArtifactError`` if not one."""
    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{MANIFEST_FILE} of {where} is corrupt: {problem}")

    data = load_object(text, MAX_MANIFEST_BYTES, bad)
    for key, kind in (("version", str), ("created_at", str), ("files", dict)):
        if not isinstance(data.get(key), kind):
            raise bad(f"field {key!r} missing or not a {kind.__name__}")
    if not VERSION_PATTERN.match(data["version"]):
        raise bad(f"invalid version name {data['version'][:80]!r}")
    try:
        datetime.fromisoformat(data["created_at"].replace("Z", "+00:00"))
    except ValueError:
        raise bad(f"created_at {data['created_at'][:40]!r} is not an ISO 8601 time") from None
    for name, entry in data["files"].items():
        try:
            validate_key(name)
        except StorageError as exc:
            raise bad(str(exc)) from None
        if name == MANIFEST_FILE or not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not _SHA256.match(entry["sha256"]) or not isinstance(entry.get("bytes"), int):
            raise bad(f"entry of file {name!r} needs a sha256 (64 hex digits) and a size in bytes")
    known = {field for field in Manifest.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        logger.info("%s of %s: ignoring fields this version does not know: %s", MANIFEST_FILE, where, unknown)
    if not isinstance(data.get("metrics", {}), dict):
        raise bad("field 'metrics' is not an object")
    return Manifest(**{key: value for key, value in data.items() if key in known})


def _load_manifest(store: Store, prefix: str, destination: Path, where: str) -> Manifest:
    store.get_file(prefix + MANIFEST_FILE, destination)
    if destination.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{MANIFEST_FILE} of {where} is corrupt: larger than {MAX_MANIFEST_BYTES} bytes")
    return read_manifest(destination.read_bytes(), where)


def read_version_manifest(store: Store, version: str) -> Manifest:
    """The manifest of the complete ``version`` of ``store``; ``ArtifactError`` if it has none or it is unusable."""
    if not VERSION_PATTERN.match(version):
        raise ArtifactError(f"invalid version id {version!r}")
    try:
        if not store.exists(f"{version}/{MANIFEST_FILE}"):
            raise ArtifactError(f"version {version} under {store.uri} is not complete: it has no {MANIFEST_FILE}")
        with tempfile.TemporaryDirectory() as scratch:
            manifest = _load_manifest(store, f"{version}/", Path(scratch) / MANIFEST_FILE, f"version {version}")
    except StorageError as exc:
        raise ArtifactError(str(exc)) from exc
    if manifest.version != version:
        raise ArtifactError(f"{MANIFEST_FILE} of version {version} names version {manifest.version!r}")
    return manifest


def candidate_versions(store: Store, scratch: Path) -> list[tuple[str, Manifest | ArtifactError]]:
    """Complete versions, newest first, with their manifest (or why it is unusable).

    A manifest that cannot be read has no trustworthy ``created_at``: such versions come first
    (newest name first), so that policy ``none`` refuses to start rather than guess, and policy
    ``previous`` logs each of them before serving the newest readable one.
    """
    readable, unreadable = [], []
    for version in store.list_versions():
        if not store.exists(f"{version}/{MANIFEST_FILE}"):
            continue
        try:
            manifest = _load_manifest(store, f"{version}/", scratch / f"{version}.{MANIFEST_FILE}",
                                      f"version {version}")
            if manifest.version != version:
                raise ArtifactError(f"{MANIFEST_FILE} of version {version} names version {manifest.version!r}")
            readable.append((created_at(manifest), version, manifest))
        except ArtifactError as exc:
            unreadable.append((version, exc))
    readable.sort(key=lambda item: (item[0], item[1]), reverse=True)
    unreadable.sort(reverse=True)
    return unreadable + [(version, manifest) for _, version, manifest in readable]


def registered_only(candidates: list[tuple[str, Manifest | ArtifactError]], where: str,
                    tracking_uri: str | None = None) -> list[tuple[str, Manifest | ArtifactError]]:
    """``candidates`` the registry knows, while one is configured (``MLFLOW_TRACKING_URI``); else all."""
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() if tracking_uri is None else tracking_uri
    if not tracking_uri or not candidates:
        return candidates
    known = registered_versions(MODEL_NAME, tracking_uri)
    for version, _ in candidates:
        if version not in known:
            logger.warning("version %s under %s is complete but unknown to the MLflow registry: never served as "
                           "the newest (python -m training_job.register %s registers it; python -m "
                           "rakuten_common.gc --delete-unregistered removes it)", version, where, version)
    return [(version, manifest) for version, manifest in candidates if version in known]


def resolve_version(store: Store) -> str | None:
    """The newest complete version in ``store``; ``""`` when ``store`` is itself one version."""
    if store.exists(MANIFEST_FILE):
        return ""
    with tempfile.TemporaryDirectory() as scratch:
        for version, manifest in candidate_versions(store, Path(scratch)):
            if isinstance(manifest, Manifest):
                return version
    return None


def verify(bundle: Path, manifest: Manifest) -> None:
    """Raise ``ArtifactError`` unless every file named in the manifest matches its checksum."""
    for name, entry in manifest.files.items():
        path = inside(bundle, name)
        if not path.is_file():
            raise ArtifactError(f"{name} listed in the manifest is missing from {bundle}")
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{name} in {bundle} does not match its manifest sha256")


def _download(store: Store, prefix: str, manifest: Manifest, cache_dir: Path, progress: ProgressFn) -> Path:
    """The version's files in a fresh folder of ``cache_dir``, verified, then moved to ``cache_dir/<version>``."""
    partial = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=cache_dir))
    try:
        for name in manifest.files:
            store.get_file(prefix + name, inside(partial, name))
            progress(f"  downloaded {name}")
        (partial / MANIFEST_FILE).write_text(manifest.to_json())
        verify(partial, manifest)
        bundle = inside(cache_dir, manifest.version)
        if bundle.exists():
            shutil.rmtree(bundle)
        os.replace(partial, bundle)
        return bundle
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _fetch_one(store: Store, version: str, manifest: Manifest, cache_dir: Path, progress: ProgressFn) -> Path:
    prefix = f"{version}/" if version else ""
    if isinstance(store, LocalStore):
        bundle = inside(store.root, version) if version else store.root
        verify(bundle, manifest)
        return bundle
    return _download(store, prefix, manifest, cache_dir, progress)


def fetch(uri: str, cache_dir: Path, progress: ProgressFn = print, fallback: str = "previous") -> tuple[Path, Manifest]:
    """Find the version ``uri`` names, copy it locally if remote, verify it.

    ``uri`` is one version (it holds ``manifest.json``), ``models:/<name>@<alias>`` or
    ``models:/<name>/<n>`` (resolved through MLflow), or a prefix of versions, local or
    ``s3://``: its champion pointer's version, or without one the newest usable version
    (``fallback``: see the module docstring). See ``rakuten_common.model_uri``.
    """
    if fallback not in FALLBACK_POLICIES:
        raise ValueError(f"fallback must be one of {FALLBACK_POLICIES}, got {fallback!r}")
    uri = resolve_model_uri(uri)
    store = open_store(uri)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        if store.exists(MANIFEST_FILE):  # one version, exactly: no fallback
            with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
                manifest = _load_manifest(store, "", Path(scratch) / MANIFEST_FILE, store.uri)
            return _fetch_one(store, "", manifest, cache_dir, progress), manifest
        with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            candidates = registered_only(candidate_versions(store, Path(scratch)), store.uri)
        if not candidates:
            raise ArtifactError(f"no complete model version (with {MANIFEST_FILE}) under {store.uri}"
                                + (" known to the MLflow registry" if os.environ.get("MLFLOW_TRACKING_URI", "").strip()
                                   else ""))
        failures = []
        for version, found in candidates:
            try:
                if isinstance(found, ArtifactError):
                    raise found
                bundle = _fetch_one(store, version, found, cache_dir, progress)
            except ArtifactError as exc:
                failures.append(f"{version}: {exc}")
                if fallback == "none":
                    raise ArtifactError(f"newest version {version} under {store.uri} is unusable "
                                        f"(fallback policy 'none'): {exc}") from None
                logger.error("version %s under %s is unusable, trying the previous one: %s", version, store.uri, exc)
                continue
            if failures:
                logger.warning("serving version %s: the %d newer version(s) are unusable", version, len(failures))
            return bundle, found
        raise ArtifactError(f"no usable model version under {store.uri}: " + "; ".join(failures))
    except StorageError as exc:
        raise ArtifactError(str(exc)) from exc
