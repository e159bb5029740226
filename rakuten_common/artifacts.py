"""Versioned model bundles in a store: publish one with its manifest written last, fetch and verify one.

The files of a bundle are described in ``rakuten_common.bundle``. A version whose manifest is
absent is incomplete and never loaded; a version that exists (complete or not) is never
overwritten.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from rakuten_common.bundle import MANIFEST_FILE, VERSION_PATTERN, Manifest
from rakuten_common.storage import LocalStore, ProgressFn, StorageError, Store, open_store


class ArtifactError(RuntimeError):
    """A model version that is missing, incomplete, already present or fails verification."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_files(bundle: Path) -> dict[str, dict]:
    """Checksum and size of every file of a bundle folder (the manifest itself excluded)."""
    return {p.relative_to(bundle).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}


def ensure_new_version(store: Store, version: str) -> None:
    """Raise ``ArtifactError`` if ``version`` is malformed or already present (even partly)."""
    if not VERSION_PATTERN.match(version):
        raise ArtifactError(f"invalid version id {version!r}")
    if store.has_prefix(version):
        raise ArtifactError(f"version {version} already exists in {store.uri}: versions are never overwritten")


def publish(bundle: Path, uri: str, manifest: Manifest, progress: ProgressFn = print) -> str:
    """Upload ``bundle`` as ``<uri>/<manifest.version>/``; return the version's URI."""
    store = open_store(uri)
    version = manifest.version
    ensure_new_version(store, version)
    manifest.files = describe_files(bundle)
    total = sum(entry["bytes"] for entry in manifest.files.values())
    sent = 0
    for name, entry in manifest.files.items():
        store.put_file(f"{version}/{name}", bundle / name)
        sent += entry["bytes"]
        progress(f"  uploaded {name} ({entry['bytes'] / 1e6:.2f} MB, {sent / max(total, 1):.0%} of {total / 1e6:.2f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        manifest_path = Path(tmp) / MANIFEST_FILE
        manifest_path.write_text(manifest.to_json())
        store.put_file(f"{version}/{MANIFEST_FILE}", manifest_path)
    progress(f"  wrote {MANIFEST_FILE}: version {version} is complete")
    return f"{store.uri}/{version}"


def resolve_version(store: Store) -> str | None:
    """The newest complete version in ``store``; ``""`` when ``store`` is itself one version."""
    if store.exists(MANIFEST_FILE):
        return ""
    complete = [v for v in store.list_versions() if store.exists(f"{v}/{MANIFEST_FILE}")]
    return complete[-1] if complete else None


def verify(bundle: Path, manifest: Manifest) -> None:
    """Raise ``ArtifactError`` unless every file named in the manifest matches its checksum."""
    for name, entry in manifest.files.items():
        path = bundle / name
        if not path.is_file():
            raise ArtifactError(f"{name} listed in the manifest is missing from {bundle}")
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{name} in {bundle} does not match its manifest sha256")


def fetch(uri: str, cache_dir: Path, progress: ProgressFn = print) -> tuple[Path, Manifest]:
    """Find the newest complete version at ``uri``, copy it locally if remote, verify it.

    ``uri`` is either one version (it holds ``manifest.json``) or a prefix of versions,
    local (``/mnt/models`` as filled by KServe's storage initializer) or ``s3://``.
    """
    from rakuten_common.model_uri import resolve_model_uri  # champion pointer, models:/ -> one version

    uri = resolve_model_uri(uri)
    store = open_store(uri)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        version = resolve_version(store)
        if version is None:
            raise ArtifactError(f"no complete model version (with {MANIFEST_FILE}) under {store.uri}")
        prefix = f"{version}/" if version else ""
        manifest_copy = cache_dir / f"{version or 'pinned'}.{MANIFEST_FILE}"
        store.get_file(prefix + MANIFEST_FILE, manifest_copy)
        manifest = Manifest.from_json(manifest_copy.read_text())
        if isinstance(store, LocalStore):
            bundle = store.root / prefix
        else:
            bundle = cache_dir / manifest.version
            shutil.rmtree(bundle, ignore_errors=True)
            for name in manifest.files:
                store.get_file(prefix + name, bundle / name)
                progress(f"  downloaded {name}")
            shutil.copyfile(manifest_copy, bundle / MANIFEST_FILE)
    except StorageError as exc:
        raise ArtifactError(str(exc)) from exc
    verify(bundle, manifest)
    return bundle, manifest
