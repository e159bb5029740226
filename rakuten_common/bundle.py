"""The layout of one model version (a *bundle*), written by training and read by serving.

A bundle is a folder of these files, ``manifest.json`` last (see ``rakuten_common.artifacts``)::

    model.keras          the Keras model (tokenisation inside), no optimizer state
    labels.json          {"prdtypecodes": [...]}: output index -> prdtypecode
    preprocessing.json   what serving must feed the model (inputs, image size, sequence length)
    vocabulary.txt       the text vectorizer's vocabulary, one token per line (drift: out-of-vocabulary share)
    profile.json         the reference data profile (``rakuten_common.profile``), for drift monitoring
    manifest.json        version, created_at, metrics, lineage, sha256 and size of every file
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rakuten_common.labels import LabelMap

if TYPE_CHECKING:  # numpy & co. stay out of --help
    from rakuten_common.profile import ReferenceProfile

#: The model's name: V2 routes, MLflow experiment and registry, manifests.
MODEL_NAME = "rakuten-classifier"

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
VOCABULARY_FILE = "vocabulary.txt"
PROFILE_FILE = "profile.json"
MANIFEST_FILE = "manifest.json"
#: Vocabulary files bigger than this are refused (20,000 tokens take about 200 KB).
MAX_VOCABULARY_BYTES = 64 * 1024 * 1024

#: Version ids: a UTC timestamp by default (``new_version``), or any such safe name.
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")


@dataclass
class Manifest:
    """``manifest.json``: what a version is, where it comes from, and the checksum of every file."""

    version: str
    created_at: str
    files: dict[str, dict] = field(default_factory=dict)  # name -> {"sha256": ..., "bytes": ...}
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    git_commit: str | None = None
    dataset_fingerprint: str | None = None
    name: str = MODEL_NAME

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))


def new_version(now: datetime | None = None) -> str:
    """A sortable UTC timestamp version id, e.g. ``20261129T041502Z``."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class PreprocessingSpec:
    """What serving must feed the model: which inputs, at which image size."""

    image_size: int
    sequence_length: int
    inputs: tuple[str, ...] = ("text", "image")

    @classmethod
    def load(cls, bundle: Path) -> PreprocessingSpec:
        data = json.loads((Path(bundle) / PREPROCESSING_FILE).read_text())
        return cls(data["image_size"], data["sequence_length"], tuple(data["inputs"]))


def save_bundle(model, labels: LabelMap, spec: PreprocessingSpec, vocabulary: list[str], out: Path,
                profile: ReferenceProfile | None = None) -> Path:
    """Write the model, label map, preprocessing spec, vocabulary and reference profile into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Serving needs no optimizer state and the .keras format has no include_optimizer switch:
    # detach it so the bundle holds the architecture and weights only (about a third the size).
    model.optimizer = None
    model.save(out / MODEL_FILE)
    (out / LABELS_FILE).write_text(json.dumps({"prdtypecodes": list(labels.codes)}, indent=2) + "\n")
    (out / PREPROCESSING_FILE).write_text(json.dumps({
        "image_size": spec.image_size,
        "sequence_length": spec.sequence_length,
        "inputs": list(spec.inputs),
        "text": "rakuten_common.preprocessing.product_text(designation, description)",
        "image": "rakuten_common.preprocessing.decode_image(file_bytes, image_size)",
    }, indent=2) + "\n")
    (out / VOCABULARY_FILE).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    if profile is not None:
        profile.save(out / PROFILE_FILE)
    return out


def load_labels(bundle: Path) -> LabelMap:
    return LabelMap(json.loads((Path(bundle) / LABELS_FILE).read_text())["prdtypecodes"])


def load_bundle(bundle: Path):
    """Return ``(keras_model, LabelMap, PreprocessingSpec)`` from a bundle folder."""
    import keras

    import rakuten_common.layers  # noqa: F401 - registers the custom layers the saved model uses

    bundle = Path(bundle)
    model = keras.saving.load_model(bundle / MODEL_FILE, compile=False)
    return model, load_labels(bundle), PreprocessingSpec.load(bundle)


def load_vocabulary(bundle: Path) -> frozenset[str]:
    """The model's vocabulary tokens (``rakuten_common.profile.model_vocabulary``)."""
    from rakuten_common.profile import model_vocabulary

    path = Path(bundle) / VOCABULARY_FILE
    if path.stat().st_size > MAX_VOCABULARY_BYTES:
        raise ValueError(f"{path} is larger than {MAX_VOCABULARY_BYTES} bytes")
    return model_vocabulary(path.read_text(encoding="utf-8").splitlines())


def load_profile(bundle: Path) -> ReferenceProfile | None:
    """The bundle's reference profile; ``None`` for bundles made before profiles existed.

    Raises ``rakuten_common.profile.ProfileError`` if the file is malformed or its classes
    are not the bundle's labels.
    """
    from rakuten_common.profile import ProfileError, ReferenceProfile

    path = Path(bundle) / PROFILE_FILE
    if not path.is_file():
        return None
    profile = ReferenceProfile.load(path)
    if profile.prdtypecodes != load_labels(bundle).codes:
        raise ProfileError(f"{PROFILE_FILE} classes are not the ones of {LABELS_FILE}")
    return profile
