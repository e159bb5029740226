"""Which one version a model URI means.

- a version folder (it holds ``manifest.json``), local or ``s3://``: that version;
- a prefix of versions: the version its champion pointer names (``rakuten_common.champion``);
  without a pointer, the newest complete version (logged as such) — and while a registry is
  configured (``MLFLOW_TRACKING_URI`` set), the newest complete version the registry knows: a
  version published but never registered (a job killed or MLflow down between ``manifest.json``
  and registration) was never seen by the gate and is skipped (``rakuten_common.artifacts.fetch``
  asks ``registered_versions``). Without ``MLFLOW_TRACKING_URI`` (the local demo, no registry
  server) nothing is asked;
- ``models:/rakuten-classifier@champion`` or ``models:/rakuten-classifier/<n>``: the version
  the MLflow Model Registry tags with its storage URI (tag ``storage_uri``). With an
  ``http(s)`` ``MLFLOW_TRACKING_URI`` the registry is asked over its REST API with the standard
  library (the server image needs no MLflow); any other tracking URI goes through ``mlflow``.

``resolve_model_uri`` returns a URI ``rakuten_common.artifacts.fetch`` reads as it always has.
What the registry and the store answer is not trusted: sizes are bounded, names validated,
and a pointer naming an incomplete version is an error, never a silent fallback.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from rakuten_common.bundle import MANIFEST_FILE, VERSION_PATTERN
from rakuten_common.champion import CHAMPION_FILE, PointerError, read_pointer
from rakuten_common.errors import ArtifactError
from rakuten_common.storage import StorageError, open_store

logger = logging.getLogger("rakuten.model_uri")

REGISTRY_SCHEME = "models:/"
#: Registry version tag holding the published version's storage URI (written by training).
STORAGE_URI_TAG = "storage_uri"
#: Registry version tag holding the version id of the bundle (its folder name).
MODEL_VERSION_TAG = "model_version"
MAX_RESPONSE_BYTES = 1024 * 1024
REGISTRY_TIMEOUT_SECONDS = 10.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")


@dataclass(frozen=True)
class RegistryRef:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{REGISTRY_SCHEME}{self.name}" + (f"@{self.alias}" if self.alias else f"/{self.version}")


def parse_registry_uri(uri: str) -> RegistryRef:
    rest = uri[len(REGISTRY_SCHEME):] if uri.startswith(REGISTRY_SCHEME) else None
    if rest is not None and "@" in rest:
        name, _, alias = rest.partition("@")
        if _NAME.match(name) and _NAME.match(alias):
            return RegistryRef(name, alias=alias)
    elif rest is not None and rest.count("/") == 1:
        name, _, version = rest.partition("/")
        if _NAME.match(name) and version.isdigit():
            return RegistryRef(name, version=version)
    raise ArtifactError(f"not a registry model URI: {uri!r} (use models:/<name>@<alias> or models:/<name>/<number>)")


def split_version_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix/<version>`` -> (``s3://bucket/prefix``, ``<version>``)."""
    prefix, _, version = uri.rstrip("/").rpartition("/")
    if not prefix or not VERSION_PATTERN.match(version):
        raise ArtifactError(f"{uri!r} is not the URI of a version folder")
    return prefix, version


# -- the registry --------------------------------------------------------------------------------
def _ssl_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert) if cert else None


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's own client sends (token, else basic auth)."""
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _rest_model_version(tracking_uri: str, ref: RegistryRef) -> dict:
    base = tracking_uri.rstrip("/") + "/api/2.0/mlflow"
    if ref.alias:
        url = f"{base}/registered-models/alias?" + urllib.parse.urlencode({"name": ref.name, "alias": ref.alias})
    else:
        url = f"{base}/model-versions/get?" + urllib.parse.urlencode({"name": ref.name, "version": ref.version})
    request = urllib.request.Request(url, headers={"Accept": "application/json", **_auth_headers()})
    try:
        with urllib.request.urlopen(request, timeout=REGISTRY_TIMEOUT_SECONDS, context=_ssl_context()) as answer:
            body = answer.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        detail = exc.read(4096).decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except ValueError:
            pass
        raise ArtifactError(f"MLflow registry at {tracking_uri} has no {ref}: HTTP {exc.code} {detail[:300]}") from None
    except OSError as exc:
        raise ArtifactError(f"MLflow registry at {tracking_uri} cannot be reached for {ref}: {exc}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise ArtifactError(f"MLflow registry answer for {ref} is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        version = json.loads(body)["model_version"]
        return {"version": str(version["version"]),
                "tags": {t["key"]: t["value"] for t in version.get("tags", []) if isinstance(t, dict)}}
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"MLflow registry answer for {ref} is not a model version ({exc})") from None


def _library_model_version(tracking_uri: str | None, ref: RegistryRef) -> dict:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri or None)
    try:
        found = (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
                 else client.get_model_version(ref.name, ref.version))
    except MlflowException as exc:
        raise ArtifactError(f"MLflow registry has no {ref}: {exc.message}") from None
    return {"version": str(found.version), "tags": dict(found.tags)}


def _rest_registered_versions(tracking_uri: str, name: str) -> set[str]:
    base = tracking_uri.rstrip("/") + "/api/2.0/mlflow/model-versions/search?"
    found: set[str] = set()
    token = ""
    for _ in range(1000):  # pages of 1000: a bound, not a limit anyone meets
        query = {"filter": f"name='{name}'", "max_results": 1000, **({"page_token": token} if token else {})}
        request = urllib.request.Request(base + urllib.parse.urlencode(query),
                                         headers={"Accept": "application/json", **_auth_headers()})
        try:
            with urllib.request.urlopen(request, timeout=REGISTRY_TIMEOUT_SECONDS, context=_ssl_context()) as answer:
                body = answer.read(MAX_RESPONSE_BYTES * 16 + 1)
            page = json.loads(body)
            versions = page.get("model_versions", [])
            found.update(t["value"] for v in versions for t in v.get("tags", [])
                         if isinstance(t, dict) and t.get("key") == MODEL_VERSION_TAG)
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ArtifactError(f"MLflow registry at {tracking_uri} cannot list the versions of {name}: {exc}") from None
        token = page.get("next_page_token") or ""
        if not token:
            break
    return found


def _library_registered_versions(tracking_uri: str, name: str) -> set[str]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    found: set[str] = set()
    token = None
    try:
        while True:
            page = client.search_model_versions(f"name='{name}'", max_results=1000, page_token=token)
            found.update(v.tags.get(MODEL_VERSION_TAG) for v in page if v.tags.get(MODEL_VERSION_TAG))
            token = page.token
            if not token:
                return found
    except MlflowException as exc:
        raise ArtifactError(f"MLflow registry cannot list the versions of {name}: {exc.message}") from None


def registered_versions(name: str, tracking_uri: str) -> set[str]:
    """The version ids (tag ``model_version``) of every registry version of ``name``.

    An unreachable registry is an ``ArtifactError``, never an empty set: a server must not
    guess which versions the gate may judge."""
    if not _NAME.match(name):
        raise ArtifactError(f"invalid registered model name {name!r}")
    if tracking_uri.startswith(("http://", "https://")):
        return _rest_registered_versions(tracking_uri, name)
    return _library_registered_versions(tracking_uri, name)


def registry_storage_uri(uri: str, tracking_uri: str | None = None) -> str:
    """The storage URI of the published version a ``models:/`` URI names."""
    ref = parse_registry_uri(uri)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking_uri.startswith(("http://", "https://")):
        found = _rest_model_version(tracking_uri, ref)
    else:
        found = _library_model_version(tracking_uri, ref)
    storage = found["tags"].get(STORAGE_URI_TAG, "")
    if not storage or len(storage) > 2048 or storage.startswith(REGISTRY_SCHEME):
        raise ArtifactError(f"registry version {found['version']} of {ref.name} has no usable "
                            f"{STORAGE_URI_TAG!r} tag ({storage[:100]!r})")
    logger.info("%s is registry version %s: %s", ref, found["version"], storage)
    return storage


# -- the store -----------------------------------------------------------------------------------
def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> str:
    """A URI ``fetch`` reads as exactly the intended version (see the module docstring)."""
    uri = str(uri)
    if uri.startswith(REGISTRY_SCHEME):
        return registry_storage_uri(uri, tracking_uri)
    try:
        store = open_store(uri)
        if store.exists(MANIFEST_FILE):
            return uri
        pointer = read_pointer(store)
        if pointer is None:
            logger.info("no %s under %s: serving its newest complete version%s", CHAMPION_FILE, store.uri,
                        " known to the registry" if os.environ.get("MLFLOW_TRACKING_URI", "").strip() else "")
            return uri
        if not store.exists(f"{pointer.version}/{MANIFEST_FILE}"):
            raise ArtifactError(f"{store.uri}/{CHAMPION_FILE} names version {pointer.version}, "
                                f"which has no {MANIFEST_FILE} there")
    except (StorageError, PointerError) as exc:
        raise ArtifactError(str(exc)) from exc
    logger.info("champion of %s: version %s (registry version %s, promoted %s by %s)", store.uri, pointer.version,
                pointer.registry_version, pointer.promoted_at or "?", pointer.promoted_by or "?")
    return f"{store.uri}/{pointer.version}"
