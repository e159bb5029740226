"""Training run: load data, fit the fused model (and optionally each branch alone), evaluate,
track in MLflow, publish a versioned bundle."""
from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from rakuten_common.artifacts import Manifest, ensure_new_version, new_version, publish
from rakuten_common.storage import open_store
from rakuten_common.bundle import PreprocessingSpec, save_bundle
from rakuten_common.labels import LabelMap
from rakuten_common.preprocessing import decode_image
from training_job import tracking
from training_job.dataset import Dataset, load_dataset, stratified_split
from training_job.evaluation import classification_metrics, confusion_figure, confusion_matrix
from training_job.model import ModelConfig, build_model, make_vectorizer


@dataclass
class TrainConfig:
    data_dir: Path
    model_uri: str
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    max_rows: int | None = None
    ablation: bool = False
    experiment: str = "rakuten-classifier"
    version: str | None = None
    image_workers: int = os.cpu_count() or 2


@dataclass
class TrainResult:
    version_uri: str
    metrics: dict[str, float]
    run_id: str
    seconds: float


def log(message: str) -> None:
    print(message, flush=True)


def load_images(paths: list[Path], size: int, workers: int) -> np.ndarray:
    """Decode every image file with the serving decoder, in parallel, reporting progress."""
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    step = max(1, len(paths) // 10)

    def decode(i: int) -> None:
        images[i] = decode_image(paths[i].read_bytes(), size)

    with ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(paths))), start=1):
            if done % step == 0 or done == len(paths):
                log(f"  decoded {done}/{len(paths)} images")
    return images


def make_inputs(texts: np.ndarray, images: np.ndarray, branches: tuple[str, ...]) -> dict:
    inputs = {}
    if "text" in branches:
        inputs["text"] = tf.constant(texts.astype(str).reshape(-1, 1))
    if "image" in branches:
        inputs["image"] = images
    return inputs


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """'Balanced' weights n / (k * count_c) so rare codes count as much as common ones."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    return {int(c): float(len(labels) / (present.sum() * counts[c])) for c in np.flatnonzero(present)}


def fit_and_evaluate(config: TrainConfig, model_config: ModelConfig, train: Dataset, val: Dataset,
                     train_images: np.ndarray, val_images: np.ndarray, labels: LabelMap,
                     prefix: str = "") -> tuple[keras.Model, dict[str, float], np.ndarray, list[str]]:
    """Fit one model and return it with its validation metrics, confusion matrix and vocabulary."""
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
    log(f"Training {'+'.join(model_config.branches)} model ({model.count_params():,} parameters) "
        f"for {config.epochs} epochs on {len(y_train)} rows, validating on {len(y_val)}")
    model.fit(train_data, validation_data=val_data, epochs=config.epochs, verbose=2, shuffle=False,
              class_weight=class_weights(y_train, len(labels)),
              callbacks=[tracking.EpochMetrics(prefix)])
    predicted = np.argmax(model.predict(val_data, verbose=0), axis=1)
    cm = confusion_matrix(y_val, predicted, len(labels))
    return model, classification_metrics(cm, labels.codes), cm, vocabulary


def run(config: TrainConfig) -> TrainResult:
    """The whole job; returns where the new version was published and its metrics."""
    started = time.time()
    labels = LabelMap()
    version = config.version or new_version()
    ensure_new_version(open_store(config.model_uri), version)  # fail before training, not after
    log(f"Loading Rakuten data from {config.data_dir}")
    data = load_dataset(config.data_dir, config.max_rows)
    if data.missing_images:
        shown = ", ".join(map(str, data.missing_images[:10]))
        log(f"WARNING: {len(data.missing_images)} rows have no image file and are left out "
            f"(row ids {shown}{' ...' if len(data.missing_images) > 10 else ''})")
    unknown = sorted(set(data.codes.tolist()) - set(labels.codes))
    if unknown:
        raise ValueError(f"labels contain prdtypecodes outside the 27 known ones: {unknown}")
    train_pos, val_pos = stratified_split(data.codes, config.val_fraction, config.seed)
    train, val = data.subset(train_pos), data.subset(val_pos)
    log(f"{len(data)} rows with images: {len(train)} train / {len(val)} validation (stratified), "
        f"{len(np.unique(data.codes))} classes; dataset fingerprint {data.fingerprint[:12]}")
    log(f"Decoding images at {config.model.image_size}x{config.model.image_size}")
    all_images = load_images(train.image_paths + val.image_paths, config.model.image_size, config.image_workers)
    train_images, val_images = all_images[:len(train)], all_images[len(train):]

    with tracking.start_run(config.experiment, run_name=version) as active:
        mlflow.log_params({**{k: v for k, v in asdict(config).items() if k not in ("model", "data_dir")},
                           **{f"model.{k}": v for k, v in asdict(config.model).items()},
                           "data_dir": str(config.data_dir), "train_rows": len(train), "val_rows": len(val)})
        mlflow.set_tags({"mlflow.source.git.commit": tracking.git_commit(), "model_version": version,
                         "dataset_fingerprint": data.fingerprint})
        mlflow.log_metric("rows_missing_image", len(data.missing_images))
        model, metrics, cm, vocabulary = fit_and_evaluate(
            config, config.model, train, val, train_images, val_images, labels)
        log(f"Validation: weighted F1 {metrics['weighted_f1']:.4f}, accuracy {metrics['accuracy']:.4f}")
        if config.ablation:
            for branch in ("text", "image"):
                _, alone, _, _ = fit_and_evaluate(config, replace(config.model, branches=(branch,)),
                                                  train, val, train_images, val_images, labels,
                                                  prefix=f"{branch}_only_")
                metrics[f"{branch}_only_weighted_f1"] = alone["weighted_f1"]
                metrics[f"{branch}_only_accuracy"] = alone["accuracy"]
                log(f"Ablation: {branch} branch alone, weighted F1 {alone['weighted_f1']:.4f}")
        mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items()})
        mlflow.log_figure(confusion_figure(cm, labels.codes, f"Validation confusion matrix, {version}"),
                          "confusion_matrix.png")
        summary = {k: v for k, v in metrics.items() if not k.startswith(("precision_", "recall_", "f1_"))}
        with tempfile.TemporaryDirectory() as tmp:
            spec = PreprocessingSpec(config.model.image_size, config.model.sequence_length, config.model.branches)
            bundle = save_bundle(model, labels, spec, vocabulary, Path(tmp) / version)
            mlflow.log_artifacts(str(bundle), artifact_path="model")
            manifest = Manifest(version=version, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                metrics=summary, mlflow_run_id=active.info.run_id,
                                git_commit=tracking.git_commit(), dataset_fingerprint=data.fingerprint)
            log(f"Publishing version {version} to {config.model_uri}")
            version_uri = publish(bundle, config.model_uri, manifest, progress=log)
        mlflow.set_tag("model_uri", version_uri)
        seconds = time.time() - started
        mlflow.log_metric("training_seconds", seconds)
    log(f"Done in {seconds:.0f} s: {version_uri} (MLflow run {active.info.run_id})")
    return TrainResult(version_uri, metrics, active.info.run_id, seconds)
