"""The layout of one model version (a *bundle*), written by training and read by serving.

A bundle is a folder of these files, ``manifest.json`` last (see ``rakuten_common.artifacts``)::

    model.keras          the Keras model (tokenisation inside), no optimizer state
    labels.json          {"prdtypecodes": [...]}: output index -> prdtypecode
    preprocessing.json   what serving must feed the model (inputs, image size, sequence length)
    vocabulary.txt       the text vectorizer's vocabulary, one token per line (for humans)
    manifest.json        version, created_at, metrics, lineage, sha256 and size of every file
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rakuten_common.labels import LabelMap

#: The model's name: V2 routes, MLflow experiment and registry, manifests.
MODEL_NAME = "rakuten-classifier"

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
VOCABULARY_FILE = "vocabulary.txt"
MANIFEST_FILE = "manifest.json"

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
    def from_json(cls, text: str) -> "Manifest":
        return cls(**json.loads(text))


def new_version(now: datetime | None = None) -> str:
    """A sortable UTC timestamp version id, e.g. ``20261129T041502Z``."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class PreprocessingSpec:
    """What serving must feed the model: which inputs, at which image size."""

    image_size: int
    sequence_length: int
    inputs: tuple[str, ...] = ("text", "image")

    @classmethod
    def load(cls, bundle: Path) -> "PreprocessingSpec":
        data = json.loads((Path(bundle) / PREPROCESSING_FILE).read_text())
        return cls(data["image_size"], data["sequence_length"], tuple(data["inputs"]))


def save_bundle(model, labels: LabelMap, spec: PreprocessingSpec, vocabulary: list[str], out: Path) -> Path:
    """Write the model, label map, preprocessing spec and vocabulary into ``out``."""
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
    return out


def load_labels(bundle: Path) -> LabelMap:
    return LabelMap(json.loads((Path(bundle) / LABELS_FILE).read_text())["prdtypecodes"])


def load_bundle(bundle: Path):
    """Return ``(keras_model, LabelMap, PreprocessingSpec)`` from a bundle folder."""
    import keras

    bundle = Path(bundle)
    model = keras.saving.load_model(bundle / MODEL_FILE, compile=False)
    return model, load_labels(bundle), PreprocessingSpec.load(bundle)
