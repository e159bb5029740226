"""The training job's settings, each declared once (default, environment variable, meaning).

``python -m training_job --help`` is built from these fields without importing TensorFlow.
"""
from __future__ import annotations

import os
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


def share(text: str) -> float:
    """A share from 0 to 1 (argparse type)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"{text} is not a share from 0 to 1")
    return value


@dataclass(frozen=True)
class QualityConfig:
    """Data-quality rules checked before training (``training_job.data_quality``); a violation fails the job."""

    max_missing_images: float = option(0.05, env="MAX_MISSING_IMAGES", type=share, metavar="SHARE",
                                       help="fail when more rows than this share have no image file (1: never)")
    max_unreadable_images: float = option(0.05, env="MAX_UNREADABLE_IMAGES", type=share, metavar="SHARE",
                                          help="fail when more image files than this share cannot be decoded "
                                               "(fewer: those rows are left out; 1: never)")
    max_unknown_codes: float = option(0.0, env="MAX_UNKNOWN_CODES", type=share, metavar="SHARE",
                                      help="fail when more rows than this share have a prdtypecode outside the 27 "
                                           "(fewer: those rows are left out)")
    min_class_rows: int = option(1, env="MIN_CLASS_ROWS",
                                 help="fail when one of the 27 classes has fewer rows (0: never)")
    max_duplicate_products: float = option(1.0, env="MAX_DUPLICATE_PRODUCTS", type=share, metavar="SHARE",
                                           help="fail when more rows than this share repeat an earlier productid "
                                                "(1: never)")
    max_imbalance_ratio: float = option(0.0, env="MAX_IMBALANCE_RATIO",
                                        help="fail when the largest class has more than this many times the rows "
                                             "of the smallest (0: never)")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, schedule, tracking and publishing."""

    data_dir: Path = option(Path("data/sample"), env="DATA_DIR", metavar="DIR",
                            help="dataset in the Rakuten layout: X_train_update.csv, Y_train_CVw08PX.csv, "
                                 "images/image_train/")
    model_uri: str = option(f"model-store/{MODEL_NAME}", env="MODEL_URI", metavar="URI",
                            help="where versions are published: a folder or s3://bucket/prefix")
    generate_sample: int = option(0, env="GENERATE_SAMPLE_ROWS", metavar="ROWS",
                                  help="first write a sample dataset of about ROWS rows into --data-dir "
                                       "if it holds none (0: never)")
    epochs: int = option(8, env="EPOCHS", help="training epochs")
    batch_size: int = option(32, env="BATCH_SIZE", help="products per training step")
    learning_rate: float = option(1e-3, env="LEARNING_RATE", help="Adam learning rate")
    val_fraction: float = option(0.2, env="VAL_FRACTION", help="stratified validation share")
    max_rows: int = option(0, env="MAX_ROWS", help="use only the first N rows (0: all)")
    ablation: bool = option(False, env="ABLATION",
                            help="also train text-only and image-only models (nested MLflow runs)")
    seed: int = option(0, env="SEED", help="random seed of the split, the shuffling and the weights")
    experiment: str = option(MODEL_NAME, env="MLFLOW_EXPERIMENT_NAME", help="MLflow experiment")
    version: str | None = option(None, env="MODEL_VERSION", metavar="ID", shown="a UTC timestamp",
                                 help="version id to publish")
    model: ModelConfig = field(default_factory=ModelConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    image_workers: int = os.cpu_count() or 2
