"""The files of one model version, written by training and read by serving."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


from rakuten_common.labels import LabelMap

MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
VOCABULARY_FILE = "vocabulary.txt"


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
    labels.save(out)
    (out / PREPROCESSING_FILE).write_text(json.dumps({
        "image_size": spec.image_size,
        "sequence_length": spec.sequence_length,
        "inputs": list(spec.inputs),
        "text": "rakuten_common.preprocessing.product_text(designation, description)",
        "image": "rakuten_common.preprocessing.decode_image(file_bytes, image_size)",
    }, indent=2) + "\n")
    (out / VOCABULARY_FILE).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    return out


def load_bundle(bundle: Path):
    """Return ``(keras_model, LabelMap, PreprocessingSpec)`` from a bundle folder."""
    import keras

    bundle = Path(bundle)
    model = keras.saving.load_model(bundle / MODEL_FILE, compile=False)
    return model, LabelMap.load(bundle), PreprocessingSpec.load(bundle)
