"""The MLflow Model Registry side of the model's versions.

Every training run registers its ``model`` artifact as a new version of the registered model
``rakuten-classifier``, tagged with where the published bundle lives (``storage_uri``, what
serving loads), its version id, dataset fingerprint, git commit and key metrics, and moves the
alias ``challenger`` to it. The promotion gate (``training_job.promote``) moves ``champion``.
Tracking and registry follow ``MLFLOW_TRACKING_URI`` as training does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME, VERSION_PATTERN, Manifest
from rakuten_common.errors import RakutenError
from rakuten_common.model_uri import MODEL_VERSION_TAG, STORAGE_URI_TAG

logger = logging.getLogger("rakuten.registry")

CHALLENGER = "challenger"
CHAMPION = "champion"
#: Metrics of the manifest copied onto the registry version as tags (when present).
TAGGED_METRICS = ("weighted_f1", "accuracy", "macro_f1", "eval_weighted_f1", "eval_accuracy", "eval_macro_f1",
                  "best_epoch")


class RegistryError(RakutenError, RuntimeError):
    """The registry cannot be reached or does not hold what was asked for."""


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
            raise RegistryError(f"MLflow registry, {what} of {self.name}: {exc.message}") from None

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
            raise RegistryError(f"MLflow registry, reading {self.name}: {exc.message}") from None
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

    # -- writing ---------------------------------------------------------------------------------
    def set_alias(self, alias: str, number: str) -> None:
        self._call(f"alias {alias}", self.client.set_registered_model_alias, self.name, alias, str(number))

    def set_tags(self, number: str, tags: dict[str, object]) -> None:
        for key, value in tags.items():
            self._call(f"tag {key}", self.client.set_model_version_tag, self.name, str(number), key, str(value))

    def register(self, run_id: str, storage_uri: str, manifest: Manifest) -> RegisteredVersion:
        """Register the run's ``model`` artifact as a new version and make it the challenger."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                self.name, description="Rakuten France product classifier (title + description + photo -> "
                                       "prdtypecode). Aliases: challenger = newest trained, champion = served.")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(f"MLflow registry, creating {self.name}: {exc.message}") from None
        if "://" not in storage_uri:  # a local store: an absolute path, whatever the reader's working directory
            storage_uri = str(Path(storage_uri).resolve())
        tags = {STORAGE_URI_TAG: storage_uri, MODEL_VERSION_TAG: manifest.version,
                "dataset_fingerprint": manifest.dataset_fingerprint or "", "git_commit": manifest.git_commit or "",
                **{name: f"{manifest.metrics[name]:.6g}" for name in TAGGED_METRICS if name in manifest.metrics}}
        created = self._call("new version", self.client.create_model_version, self.name,
                             source=f"runs:/{run_id}/model", run_id=run_id, tags=tags,
                             description=f"Model version {manifest.version}, published to {storage_uri}")
        self.set_alias(CHALLENGER, created.version)
        registered = self._describe(created)
        logger.info("Registered %s as %s of %s, alias %s", storage_uri, registered, self.name, CHALLENGER)
        return registered
