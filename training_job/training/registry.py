"""The MLflow Model Registry side of the model's versions.

Every training run registers its ``model`` artifact as a new version of the registered model
``rakuten-classifier``, tagged with where the published bundle lives (``storage_uri``, what
serving loads), its version id, dataset fingerprint, git commit and key metrics, and moves the
alias ``challenger`` to it. The promotion gate (``training_job.promote``) moves ``champion``.
Tracking and registry follow ``MLFLOW_TRACKING_URI`` as training does; every call is bounded by
``--tracking-timeout`` (``rakuten_common.tracking_server``) and an ``MlflowException`` becomes a
``RegistryError`` here, at the boundary.

A version published while MLflow was down (or by a job killed before registering) is complete
in storage and unknown to the registry: the job exits 5 (``NotRegisteredError``), serving never
picks it as "the newest" while a registry is configured, and ``register_published`` (``python -m
training_job.register VERSION``) registers it later from its manifest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rakuten_common.artifacts import read_version_manifest
from rakuten_common.bundle import MODEL_NAME, VERSION_PATTERN, Manifest
from rakuten_common.errors import RakutenError
from rakuten_common.model_uri import (
    MODEL_VERSION_TAG,
    STORAGE_URI_TAG,
    split_version_uri,
)
from rakuten_common.storage import open_store
from rakuten_common.tracking_server import error_line

logger = logging.getLogger("rakuten.registry")

CHALLENGER = "challenger"
CHAMPION = "champion"
#: Metrics of the manifest copied onto the registry version as tags (when present).
TAGGED_METRICS = ("weighted_f1", "accuracy", "macro_f1", "eval_weighted_f1", "eval_accuracy", "eval_macro_f1",
                  "best_epoch")


class RegistryError(RakutenError, RuntimeError):
    """The registry cannot be reached or does not hold what was asked for."""


class NotRegisteredError(RegistryError):
    """A version is published in storage but the registry does not hold it."""


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of the registered model, as the registry describes it."""

    number: str
    storage_uri: str
    model_version: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"registry version {self.number} ({self.model_version})"


class Registry:
    """The registered model ``name`` through an ``MlflowClient`` (``MLFLOW_TRACKING_URI``)."""

    def __init__(self, name: str = MODEL_NAME, client=None):
        from mlflow import MlflowClient

        self.name = name
        self.client = client or MlflowClient()

    def _call(self, what: str, function, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return function(*args, **kwargs)
        except MlflowException as exc:
            raise RegistryError(f"MLflow registry, {what} of {self.name}: {error_line(exc)}") from None

    @staticmethod
    def _describe(found) -> RegisteredVersion:
        tags = dict(found.tags or {})
        return RegisteredVersion(str(found.version), tags.get(STORAGE_URI_TAG, ""),
                                 tags.get(MODEL_VERSION_TAG, ""), found.run_id, tags)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, number: str) -> RegisteredVersion:
        return self._describe(self._call(f"version {number}", self.client.get_model_version, self.name, str(number)))

    def aliases(self) -> dict[str, str]:
        """alias -> version number (empty when the model is not registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise RegistryError(f"MLflow registry, reading {self.name}: {error_line(exc)}") from None
        return {alias: str(number) for alias, number in (model.aliases or {}).items()}

    def by_alias(self, alias: str) -> RegisteredVersion | None:
        number = self.aliases().get(alias)
        return None if number is None else self.get(number)

    def find(self, reference: str) -> RegisteredVersion:
        """A version by registry number (``7``) or by bundle version id (``20261129T041502Z``)."""
        if reference.isdigit():
            return self.get(reference)
        if not VERSION_PATTERN.match(reference):  # also keeps quotes out of the search filter
            raise RegistryError(f"{reference!r} is neither a registry version number nor a model version id")
        found = self._call("search", self.client.search_model_versions,
                           f"name = '{self.name}' and tag.{MODEL_VERSION_TAG} = '{reference}'")
        if not found:
            raise RegistryError(f"{self.name} has no registry version with {MODEL_VERSION_TAG} {reference!r}")
        return self._describe(max(found, key=lambda v: int(v.version)))

    def find_version_id(self, version: str) -> RegisteredVersion | None:
        """The newest registry version of the bundle version ``version``, ``None`` if none."""
        try:
            return self.find(version)
        except RegistryError as exc:
            if "has no registry version" in str(exc):
                return None
            raise

    def model_source(self, run_id: str | None, storage_uri: str) -> tuple[str, str | None]:
        """(source, run id) of a new version: the run's ``model`` artifact when the run holds one,
        else the published bundle itself (its run, if it exists, still linked)."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return storage_uri, None
        try:
            self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"MLflow, reading run {run_id}: {error_line(exc)}") from None
            return storage_uri, None
        try:
            if any(item.path == "model" for item in self.client.list_artifacts(run_id)):
                return f"runs:/{run_id}/model", run_id
        except Exception as exc:  # the published bundle is the model either way
            logger.info("the artifacts of run %s cannot be listed (%s): the published bundle is the source",
                        run_id, error_line(exc))
        return storage_uri, run_id

    # -- writing ---------------------------------------------------------------------------------
    def set_alias(self, alias: str, number: str) -> None:
        self._call(f"alias {alias}", self.client.set_registered_model_alias, self.name, alias, str(number))

    def set_tags(self, number: str, tags: dict[str, object]) -> None:
        for key, value in tags.items():
            self._call(f"tag {key}", self.client.set_model_version_tag, self.name, str(number), key, str(value))

    def register(self, run_id: str | None, storage_uri: str, manifest: Manifest,
                 source: str | None = None) -> RegisteredVersion:
        """Register the run's ``model`` artifact (or ``source``) as a new version and make it the challenger."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                self.name, description="Rakuten France product classifier (title + description + photo -> "
                                       "prdtypecode). Aliases: challenger = newest trained, champion = served.")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(f"MLflow registry, creating {self.name}: {error_line(exc)}") from None
        if "://" not in storage_uri:  # a local store: an absolute path, whatever the reader's working directory
            storage_uri = str(Path(storage_uri).resolve())
        tags = {STORAGE_URI_TAG: storage_uri, MODEL_VERSION_TAG: manifest.version,
                "dataset_fingerprint": manifest.dataset_fingerprint or "", "git_commit": manifest.git_commit or "",
                **{name: f"{manifest.metrics[name]:.6g}" for name in TAGGED_METRICS if name in manifest.metrics}}
        created = self._call("new version", self.client.create_model_version, self.name,
                             source=source or f"runs:/{run_id}/model", run_id=run_id, tags=tags,
                             description=f"Model version {manifest.version}, published to {storage_uri}")
        self.set_alias(CHALLENGER, created.version)
        registered = self._describe(created)
        logger.info("Registered %s as %s of %s, alias %s", storage_uri, registered, self.name, CHALLENGER)
        return registered


def register_hint(version: str, model_uri: str) -> str:
    return f"register it once MLflow is back: python -m training_job.register {version} --model-uri {model_uri}"


def register_trained(run_id: str | None, tracking_down: str | None, version_uri: str,
                     manifest: Manifest) -> RegisteredVersion:
    """Register the version a training run has just published; ``NotRegisteredError`` (one line
    naming the command that registers it later) if tracking is down or the registry fails."""
    prefix, version = split_version_uri(version_uri)
    if tracking_down is not None:
        raise NotRegisteredError(f"version {version} is published at {version_uri} but NOT registered: MLflow "
                                 f"tracking failed during the run ({tracking_down}); {register_hint(version, prefix)}")
    try:
        return Registry().register(run_id, version_uri, manifest)
    except RegistryError as exc:
        raise NotRegisteredError(f"version {version} is published at {version_uri} but NOT registered ({exc}); "
                                 f"{register_hint(version, prefix)}") from None


def register_published(model_uri: str, version: str, registry: Registry | None = None) -> RegisteredVersion:
    """Register the complete ``version`` of ``model_uri`` from its manifest, as training would have
    (tags, alias ``challenger``); a version the registry holds already is returned unchanged."""
    store = open_store(model_uri)
    manifest = read_version_manifest(store, version)
    registry = registry or Registry()
    existing = registry.find_version_id(version)
    if existing is not None:
        logger.info("%s/%s is already %s: nothing to do", store.uri, version, existing)
        return existing
    storage_uri = f"{store.uri}/{version}"
    source, run_id = registry.model_source(manifest.mlflow_run_id, storage_uri)
    return registry.register(run_id, storage_uri, manifest, source=source)
