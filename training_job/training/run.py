"""Training run: load data, split it, decode images once to disk, fit the fused model (and
optionally each branch alone) with early stopping, evaluate, publish a bundle, track in MLflow,
register it.

Order, so that an MLflow outage never costs a trained model: the MLflow run must start (else
nothing is trained); training, evaluation and publishing never wait on tracking (a failed
tracking call turns tracking off for the job, ``tracking.TrainingRun``); the bundle is published,
then the results are logged and the version registered. Registration that fails raises
``NotRegisteredError``: the version is complete in storage, the command exits 5.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import mlflow
import numpy as np
from sklearn.utils.class_weight import compute_sample_weight

from rakuten_common.artifacts import ensure_new_version, publish
from rakuten_common.bundle import Manifest, PreprocessingSpec, new_version, save_bundle
from rakuten_common.faults import kill_point
from rakuten_common.labels import LabelMap
from rakuten_common.profile import ReferenceProfile, build_profile
from rakuten_common.storage import open_store
from training_job.config import ModelConfig, TrainConfig
from training_job.data import image_cache
from training_job.data import quality as data_quality
from training_job.data.dataset import Dataset, load_dataset
from training_job.data.increments import Lineage, training_data
from training_job.training import tracking, wide
from training_job.training.evaluation import (
    classification_metrics,
    confusion_figure,
    confusion_matrix,
    per_class_f1_figure,
)
from training_job.training.inputs import batches
from training_job.training.model import build_model, has_wide_part
from training_job.training.model import vocabulary as model_vocabulary
from training_job.training.registry import register_trained
from training_job.training.splits import three_way_split

logger = logging.getLogger("rakuten.training")


@dataclass
class TrainResult:
    version_uri: str
    metrics: dict[str, float]
    run_id: str
    seconds: float
    registry_version: str | None = None


@dataclass
class Split:
    """Row positions of the three splits of one dataset."""

    train: np.ndarray
    val: np.ndarray
    evaluation: np.ndarray


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


def fit(config: TrainConfig, model_config: ModelConfig, data: Dataset, split: Split,
        images: image_cache.ImageCache, labels: LabelMap) -> tuple[keras.Model, list[str], int]:
    """Fit one model with early stopping on validation weighted F1 (its wide part first, its fusion
    last: ``training.wide``); return it (best weights), its vocabulary and the 1-based number of
    its best epoch."""
    keras.utils.set_random_seed(config.seed)
    model = build_model(model_config, data.texts[split.train])
    num_classes = len(labels)
    targets = np.array([labels.to_index(c) for c in data.codes])
    if has_wide_part(model_config):
        wide.fit_wide(model, model_config, data.texts, targets, split.train, split.val, config.seed)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="categorical_crossentropy",
                  metrics=["accuracy", keras.metrics.F1Score(average="weighted", name="weighted_f1")])
    y = keras.utils.to_categorical(targets, num_classes).astype(np.float32)
    # 'Balanced' weights (n / (k * count)), computed on the training rows, so rare codes count as much.
    weights = np.ones(len(data), dtype=np.float32)
    weights[split.train] = compute_sample_weight("balanced", data.codes[split.train])
    train_data = batches(data.texts, images, split.train, y, config.batch_size, model_config.branches,
                         shuffle_seed=config.seed, sample_weights=weights)
    val_data = batches(data.texts, images, split.val, y, config.batch_size, model_config.branches)
    stop = keras.callbacks.EarlyStopping(monitor="val_weighted_f1", mode="max", patience=config.patience,
                                         restore_best_weights=True)
    logger.info("Training %s model (%s parameters) for up to %d epochs on %d rows, validating on %d",
                "+".join(model_config.branches), f"{model.count_params():,}", config.epochs,
                len(split.train), len(split.val))
    history = model.fit(train_data, validation_data=val_data, epochs=config.epochs, verbose=0, shuffle=False,
                        callbacks=[EpochLog(config.epochs), stop, tracking.EpochMetrics()])
    scores = history.history["val_weighted_f1"]
    best_epoch = int(np.argmax(scores)) + 1
    if stop.stopped_epoch:
        logger.info("Early stop after epoch %d: best validation weighted F1 %.4f at epoch %d (weights restored)",
                    stop.stopped_epoch + 1, max(scores), best_epoch)
    if has_wide_part(model_config):
        wide.fit_fusion(model, batches(data.texts, images, split.val, None, config.batch_size * 4,
                                       model_config.branches), targets[split.val])
    return model, model_vocabulary(model), best_epoch


def predict(model: keras.Model, data: Dataset, rows: np.ndarray, images: image_cache.ImageCache,
            branches: tuple[str, ...], batch_size: int) -> np.ndarray:
    """``(len(rows), classes)`` probabilities, streamed like training."""
    return model.predict(batches(data.texts, images, rows, None, batch_size * 4, branches), verbose=0)


def evaluate(probabilities: np.ndarray, codes: np.ndarray, labels: LabelMap) -> tuple[dict[str, float], np.ndarray]:
    y_true = np.array([labels.to_index(c) for c in codes])
    y_pred = np.argmax(probabilities, axis=1)
    return classification_metrics(y_true, y_pred, labels.codes), confusion_matrix(y_true, y_pred, len(labels))


def reference_profile(quality: data_quality.QualityReport, data: Dataset, rows: np.ndarray,
                      images: image_cache.ImageCache, probabilities: np.ndarray, train_codes: np.ndarray,
                      vocabulary: list[str], labels: LabelMap, sequence_length: int) -> ReferenceProfile:
    """The bundle's reference profile, from the validation rows (read a chunk at a time)."""
    chunks = [rows[i:i + 1024] for i in range(0, len(rows), 1024)]
    features = np.concatenate([quality.profile_features(data.subset(chunk), images.read(chunk), vocabulary,
                                                        sequence_length) for chunk in chunks])
    return build_profile(features, probabilities, train_codes, labels.codes)


def prepare_data(config: TrainConfig, labels: LabelMap, version: str
                 ) -> tuple[Dataset, Split, image_cache.ImageCache, data_quality.QualityReport, Lineage]:
    """Load (the base and the chosen increments), decode, check and split: everything before the
    first epoch. A broken data-quality rule raises ``DataQualityError`` (and records a FAILED
    MLflow run) before any training."""
    data_dir, lineage = training_data(config.data_dir, config.cache_dir, config.increments)
    logger.info("Loading Rakuten data from %s", data_dir)
    data = load_dataset(data_dir, config.max_rows or None)
    if data.missing_images:
        shown = ", ".join(map(str, data.missing_images[:10]))
        logger.warning("%d rows have no image file and are left out (row ids %s%s)", len(data.missing_images),
                       shown, " ..." if len(data.missing_images) > 10 else "")
    images = image_cache.build(data.image_paths, config.model.image_size, Path(config.cache_dir) / "images",
                               config.image_workers)
    quality = data_quality.check_dataset(data_dir, data, images, config.quality, config.max_rows or None)
    tracking.record_quality_failure(quality, config.experiment, version)
    usable = quality.usable_rows(data)
    train, val, evaluation = (usable[rows] for rows in three_way_split(
        data.productids[usable], data.codes[usable], config.eval_fraction, config.val_fraction, config.seed))
    logger.info("%d usable rows: %d train / %d validation (stratified) / %d evaluation (fixed by productid), "
                "%d classes; dataset fingerprint %s", len(usable), len(train), len(val), len(evaluation),
                len(np.unique(data.codes[usable])), data.fingerprint[:12])
    return data, Split(train, val, evaluation), images, quality, lineage


def run(config: TrainConfig) -> TrainResult:
    """The whole job; returns where the new version was published and its metrics."""
    started = time.time()
    labels = LabelMap()
    version = config.version or new_version()
    store = open_store(config.model_uri)
    ensure_new_version(store, version)  # fail before training, not after
    data, split, images, quality, lineage = prepare_data(config, labels, version)
    branches = config.model.branches

    tracked = tracking.TrainingRun(config.experiment, version).start(store)
    status = "FAILED"
    try:
        tracked.call("logging parameters", mlflow.log_params, {
            **{k: v for k, v in asdict(config).items() if k not in ("model", "data_dir")},
            **{f"model.{k}": v for k, v in asdict(config.model).items()},
            "data_dir": str(config.data_dir), "train_rows": len(split.train),
            "val_rows": len(split.val), "eval_rows": len(split.evaluation)})
        tracked.call("tagging the run", mlflow.set_tags, {"mlflow.source.git.commit": tracking.git_commit(),
                                                          "dataset_fingerprint": data.fingerprint})
        tracked.call("logging missing images", mlflow.log_metric, "rows_missing_image", len(data.missing_images))
        tracked.call("logging the data's lineage", lineage.log_to_mlflow)
        tracked.call("logging data quality", data_quality.log_to_mlflow, quality)
        model, vocabulary, best_epoch = fit(config, config.model, data, split, images, labels)
        val_probabilities = predict(model, data, split.val, images, branches, config.batch_size)
        metrics, cm = evaluate(val_probabilities, data.codes[split.val], labels)
        metrics["best_epoch"] = best_epoch
        logger.info("Validation: weighted F1 %.4f, accuracy %.4f (best epoch %d)",
                    metrics["weighted_f1"], metrics["accuracy"], best_epoch)
        if len(split.evaluation):
            evaluation, _ = evaluate(predict(model, data, split.evaluation, images, branches, config.batch_size),
                                     data.codes[split.evaluation], labels)
            metrics.update({f"eval_{k}": v for k, v in evaluation.items()})
            logger.info("Evaluation split: weighted F1 %.4f, accuracy %.4f",
                        evaluation["weighted_f1"], evaluation["accuracy"])
        if config.ablation:
            for branch in ("text", "image"):
                with tracked.nested(f"{version}-{branch}-only"):
                    alone_config = replace(config.model, branches=(branch,))
                    alone, _, alone_best = fit(config, alone_config, data, split, images, labels)
                    alone_metrics, _ = evaluate(predict(alone, data, split.val, images, (branch,), config.batch_size),
                                                data.codes[split.val], labels)
                    tracked.call("logging ablation metrics", mlflow.log_metrics,
                                 {**{f"val_{k}": v for k, v in alone_metrics.items()}, "best_epoch": alone_best},
                                 step=config.epochs)
                metrics[f"{branch}_only_weighted_f1"] = alone_metrics["weighted_f1"]
                metrics[f"{branch}_only_accuracy"] = alone_metrics["accuracy"]
                logger.info("Ablation: %s branch alone, weighted F1 %.4f", branch, alone_metrics["weighted_f1"])
        per_class = ("precision_", "recall_", "f1_")
        summary = {k: v for k, v in metrics.items() if not k.removeprefix("eval_").startswith(per_class)}
        with tempfile.TemporaryDirectory() as tmp:
            spec = PreprocessingSpec(config.model.image_size, config.model.sequence_length, branches)
            profile = reference_profile(quality, data, split.val, images, val_probabilities, data.codes[split.train],
                                        vocabulary, labels, spec.sequence_length)
            bundle = save_bundle(model, labels, spec, vocabulary, Path(tmp) / version, profile)
            manifest = Manifest(version=version, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                metrics=summary, mlflow_run_id=tracked.run_id,
                                git_commit=tracking.git_commit(), dataset_fingerprint=data.fingerprint)
            logger.info("Publishing version %s to %s", version, config.model_uri)
            version_uri = publish(bundle, config.model_uri, manifest, progress=logger.info)
            kill_point("published")
            # At the step after the last epoch's: MLflow shows a metric's value at its highest step,
            # and the per-epoch curves (tracking.EpochMetrics) use the same names.
            tracked.call("logging metrics", mlflow.log_metrics, {f"val_{k}": v for k, v in metrics.items()},
                         step=config.epochs)
            tracked.call("logging the confusion matrix", mlflow.log_figure,
                         confusion_figure(cm, labels.codes, f"Validation confusion matrix, {version}"),
                         "confusion_matrix.png")
            tracked.call("logging the F1 per class", mlflow.log_figure,
                         per_class_f1_figure(metrics, labels.codes, f"Validation F1 per class, {version}"),
                         "per_class_f1.png")
            tracked.call("logging the model", mlflow.log_artifacts, str(bundle), artifact_path="model")
        tracked.call("tagging the run", mlflow.set_tag, "model_uri", version_uri)
        registered = register_trained(tracked.run_id, tracked.down, version_uri, manifest)  # alias challenger
        kill_point("registered")
        seconds = time.time() - started
        tracked.call("tagging the run", mlflow.set_tag, "registry_version", registered.number)
        tracked.call("logging the duration", mlflow.log_metric, "training_seconds", seconds)
        status = "FINISHED"
    finally:
        tracked.end(status)
    logger.info("Done in %.0f s: %s (MLflow run %s)", seconds, version_uri, tracked.run_id)
    return TrainResult(version_uri, metrics, tracked.run_id, seconds, registered.number)
