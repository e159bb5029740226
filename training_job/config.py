"""The training job's settings, each declared once (default, environment variable, meaning).

``python -m training_job --help`` is built from these fields without importing TensorFlow.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME
from rakuten_common.options import option

#: Image backbones: name -> (keras.applications constructor, input rescaling (scale, offset)).
BACKBONES = {
    "mobilenet_v2": ("MobileNetV2", (1 / 127.5, -1.0)),
    "efficientnet_b0": ("EfficientNetB0", (1.0, 0.0)),  # has its own normalisation layers
}


@dataclass(frozen=True)
class ModelConfig:
    """The concatenated model's architecture (``training_job.model``)."""

    image_size: int = option(128, env="IMAGE_SIZE", help="image side in pixels")
    sequence_length: int = option(64, env="SEQUENCE_LENGTH", help="tokens kept per product")
    max_tokens: int = option(20_000, env="MAX_TOKENS", help="vocabulary size")
    backbone: str = option("cnn", env="IMAGE_BACKBONE", choices=("cnn", *BACKBONES),
                           help="image branch: a small CNN, or a keras.applications backbone")
    backbone_weights: Path | None = option(None, env="BACKBONE_WEIGHTS", type=Path, metavar="FILE",
                                           help="pretrained weights file for --backbone (then frozen); "
                                                "nothing is ever downloaded")
    num_classes: int = 27
    embedding_dim: int = 64
    text_filters: int = 128
    image_filters: tuple[int, ...] = (16, 32, 64)
    fusion_units: int = 256
    dropout: float = 0.3
    branches: tuple[str, ...] = ("text", "image")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, schedule, tracking and publishing."""

    data_dir: str = option("data/sample", env="DATA_DIR", metavar="DIR|URI",
                           help="dataset in the raw Rakuten layout (X_train_update.csv, Y_train_CVw08PX.csv, "
                                "images/image_train/): a folder or s3://bucket/prefix")
    model_uri: str = option(f"model-store/{MODEL_NAME}", env="MODEL_URI", metavar="URI",
                            help="where versions are published: a folder or s3://bucket/prefix")
    generate_sample: int = option(0, env="GENERATE_SAMPLE_ROWS", metavar="ROWS",
                                  help="first write a sample dataset of about ROWS rows into --data-dir "
                                       "(a folder) if it holds none (0: never)")
    epochs: int = option(8, env="EPOCHS", help="training epochs")
    batch_size: int = option(32, env="BATCH_SIZE", help="products per training step")
    learning_rate: float = option(1e-3, env="LEARNING_RATE", help="Adam learning rate")
    val_fraction: float = option(0.2, env="VAL_FRACTION",
                                 help="stratified validation share of the rows outside the evaluation split "
                                      "(early stopping)")
    eval_fraction: float = option(0.1, env="EVAL_FRACTION",
                                  help="share of products in the fixed evaluation split (by productid hash); "
                                       "never trained on; the promotion gate scores on it")
    patience: int = option(3, env="PATIENCE",
                           help="epochs without a better validation weighted F1 before stopping "
                                "(the best epoch's weights are kept)")
    max_rows: int = option(0, env="MAX_ROWS", help="use only the first N rows (0: all)")
    ablation: bool = option(False, env="ABLATION",
                            help="also train text-only and image-only models (nested MLflow runs)")
    promote: bool = option(False, env="PROMOTE",
                           help="then judge the new version with the promotion gate, promote it and roll it out "
                                "(python -m training_job.promote; its settings from the environment)")
    seed: int = option(0, env="SEED", help="random seed of the split, the shuffling and the weights")
    experiment: str = option(MODEL_NAME, env="MLFLOW_EXPERIMENT_NAME", help="MLflow experiment")
    version: str | None = option(None, env="MODEL_VERSION", metavar="ID", shown="a UTC timestamp",
                                 help="version id to publish")
    cache_dir: Path = option(Path(tempfile.gettempdir()) / "rakuten-cache", env="CACHE_DIR", metavar="DIR",
                             help="decoded images and downloaded datasets are kept here between runs")
    model: ModelConfig = field(default_factory=ModelConfig)
    image_workers: int = os.cpu_count() or 2

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"--eval-fraction must be at least 0 and below 1, got {self.eval_fraction}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("--epochs, --batch-size and --patience must be at least 1")
