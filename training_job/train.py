"""Training run: load data, fit the fused model (and optionally each branch alone), evaluate,
track in MLflow, publish a versioned bundle."""
from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from rakuten_common.artifacts import ensure_new_version, publish
from rakuten_common.bundle import Manifest, PreprocessingSpec, new_version, save_bundle
from rakuten_common.labels import LabelMap
from rakuten_common.preprocessing import decode_image
from rakuten_common.profile import build_profile
from rakuten_common.storage import open_store
from training_job import data_quality, tracking
from training_job.config import ModelConfig, TrainConfig
from training_job.dataset import Dataset, load_dataset, stratified_split
from training_job.evaluation import classification_metrics, confusion_figure, confusion_matrix
from training_job.model import build_model, make_vectorizer

logger = logging.getLogger("rakuten.training")


@dataclass
class TrainResult:
    version_uri: str
    metrics: dict[str, float]
    run_id: str
    seconds: float


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch in the project's format (instead of Keras' own progress output)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        shown = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        logger.info("Epoch %d/%d (%.0f s): %s", epoch + 1, self.epochs, time.monotonic() - self.started, shown)


def load_images(paths: list[Path], size: int, workers: int) -> np.ndarray:
    """Decode every image file with the serving decoder, in parallel, reporting progress."""
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    step = max(1, len(paths) // 10)

    def decode(i: int) -> None:
        images[i] = decode_image(paths[i].read_bytes(), size)

    with ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(paths))), start=1):
            if done % step == 0 or done == len(paths):
                logger.info("  decoded %d/%d images", done, len(paths))
    return images


def make_inputs(texts: np.ndarray, images: np.ndarray, branches: tuple[str, ...]) -> dict:
    inputs = {}
    if "text" in branches:
        inputs["text"] = tf.constant(texts.astype(str).reshape(-1, 1))
    if "image" in branches:
        inputs["image"] = images
    return inputs


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """scikit-learn's 'balanced' weights, so rare codes count as much as common ones."""
    present = np.unique(labels)
    return dict(zip(present.tolist(), compute_class_weight("balanced", classes=present, y=labels).tolist()))


def fit_and_evaluate(config: TrainConfig, model_config: ModelConfig, train: Dataset, val: Dataset,
                     train_images: np.ndarray, val_images: np.ndarray, labels: LabelMap,
                     ) -> tuple[keras.Model, dict[str, float], np.ndarray, list[str], np.ndarray]:
    """Fit one model; return it, its validation metrics, confusion matrix, vocabulary and probabilities."""
    keras.utils.set_random_seed(config.seed)
    vectorizer = None
    vocabulary: list[str] = []
    if "text" in model_config.branches:
        vectorizer = make_vectorizer(model_config)
        vectorizer.adapt(tf.constant(train.texts.astype(str)))
        vocabulary = [str(token) for token in vectorizer.get_vocabulary()]
    model = build_model(model_config, vectorizer)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    y_train = np.array([labels.to_index(c) for c in train.codes])
    y_val = np.array([labels.to_index(c) for c in val.codes])
    train_data = (tf.data.Dataset.from_tensor_slices(
        (make_inputs(train.texts, train_images, model_config.branches), y_train))
        .shuffle(len(y_train), seed=config.seed).batch(config.batch_size).prefetch(tf.data.AUTOTUNE))
    val_data = tf.data.Dataset.from_tensor_slices(
        (make_inputs(val.texts, val_images, model_config.branches), y_val)).batch(config.batch_size)
    logger.info("Training %s model (%s parameters) for %d epochs on %d rows, validating on %d",
                "+".join(model_config.branches), f"{model.count_params():,}", config.epochs, len(y_train), len(y_val))
    model.fit(train_data, validation_data=val_data, epochs=config.epochs, verbose=0, shuffle=False,
              class_weight=class_weights(y_train),
              callbacks=[EpochLog(config.epochs), mlflow.keras.MlflowCallback()])
    probabilities = model.predict(val_data, verbose=0)
    predicted = np.argmax(probabilities, axis=1)
    return (model, classification_metrics(y_val, predicted, labels.codes),
            confusion_matrix(y_val, predicted, len(labels)), vocabulary, probabilities)


def run(config: TrainConfig) -> TrainResult:
    """The whole job; returns where the new version was published and its metrics."""
    started = time.time()
    labels = LabelMap()
    version = config.version or new_version()
    ensure_new_version(open_store(config.model_uri), version)  # fail before training, not after
    logger.info("Loading Rakuten data from %s", config.data_dir)
    data = load_dataset(config.data_dir, config.max_rows or None)
    if data.missing_images:
        shown = ", ".join(map(str, data.missing_images[:10]))
        logger.warning("%d rows have no image file and are left out (row ids %s%s)", len(data.missing_images),
                       shown, " ..." if len(data.missing_images) > 10 else "")
    quality = data_quality.check_dataset(config.data_dir, data, config.quality, config.max_rows or None,
                                         config.image_workers)
    data_quality.enforce(quality, config.experiment, version)  # raises before training on a broken rule
    data = quality.usable(data)
    train_pos, val_pos = stratified_split(data.codes, config.val_fraction, config.seed)
    train, val = data.subset(train_pos), data.subset(val_pos)
    logger.info("%d rows with images: %d train / %d validation (stratified), %d classes; dataset fingerprint %s",
                len(data), len(train), len(val), len(np.unique(data.codes)), data.fingerprint[:12])
    logger.info("Decoding images at %dx%d", config.model.image_size, config.model.image_size)
    all_images = load_images(train.image_paths + val.image_paths, config.model.image_size, config.image_workers)
    train_images, val_images = all_images[:len(train)], all_images[len(train):]

    with tracking.start_run(config.experiment, run_name=version) as active:
        mlflow.log_params({**{k: v for k, v in asdict(config).items() if k not in ("model", "data_dir")},
                           **{f"model.{k}": v for k, v in asdict(config.model).items()},
                           "data_dir": str(config.data_dir), "train_rows": len(train), "val_rows": len(val)})
        mlflow.set_tags({"mlflow.source.git.commit": tracking.git_commit(), "model_version": version,
                         "dataset_fingerprint": data.fingerprint})
        mlflow.log_metric("rows_missing_image", len(data.missing_images))
        data_quality.log_to_mlflow(quality)
        model, metrics, cm, vocabulary, val_probabilities = fit_and_evaluate(
            config, config.model, train, val, train_images, val_images, labels)
        logger.info("Validation: weighted F1 %.4f, accuracy %.4f", metrics["weighted_f1"], metrics["accuracy"])
        if config.ablation:
            for branch in ("text", "image"):
                with mlflow.start_run(run_name=f"{version}-{branch}-only", nested=True):
                    _, alone, _, _, _ = fit_and_evaluate(config, replace(config.model, branches=(branch,)),
                                                         train, val, train_images, val_images, labels)
                    mlflow.log_metrics({f"val_{k}": v for k, v in alone.items()})
                metrics[f"{branch}_only_weighted_f1"] = alone["weighted_f1"]
                metrics[f"{branch}_only_accuracy"] = alone["accuracy"]
                logger.info("Ablation: %s branch alone, weighted F1 %.4f", branch, alone["weighted_f1"])
        mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items()})
        mlflow.log_figure(confusion_figure(cm, labels.codes, f"Validation confusion matrix, {version}"),
                          "confusion_matrix.png")
        summary = {k: v for k, v in metrics.items() if not k.startswith(("precision_", "recall_", "f1_"))}
        with tempfile.TemporaryDirectory() as tmp:
            spec = PreprocessingSpec(config.model.image_size, config.model.sequence_length, config.model.branches)
            profile = build_profile(quality.profile_features(val, val_images, vocabulary, spec.sequence_length),
                                    val_probabilities, train.codes, labels.codes)
            bundle = save_bundle(model, labels, spec, vocabulary, Path(tmp) / version, profile)
            mlflow.log_artifacts(str(bundle), artifact_path="model")
            manifest = Manifest(version=version, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                metrics=summary, mlflow_run_id=active.info.run_id,
                                git_commit=tracking.git_commit(), dataset_fingerprint=data.fingerprint)
            logger.info("Publishing version %s to %s", version, config.model_uri)
            version_uri = publish(bundle, config.model_uri, manifest, progress=logger.info)
        mlflow.set_tag("model_uri", version_uri)
        seconds = time.time() - started
        mlflow.log_metric("training_seconds", seconds)
    logger.info("Done in %.0f s: %s (MLflow run %s)", seconds, version_uri, active.info.run_id)
    return TrainResult(version_uri, metrics, active.info.run_id, seconds)
