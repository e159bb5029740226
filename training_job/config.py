"""The training job's settings, each declared once (default, environment variable, meaning).

``python -m training_job --help`` is built from these fields without importing TensorFlow.
"""
from __future__ import annotations

import argparse
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME
from rakuten_common.cpu import available_cpus
from rakuten_common.options import AT_LEAST_ONE, COUNT, POSITIVE, SHARE, bounded, option
from rakuten_common.tracking_server import (
    DEFAULT_TRACKING_TIMEOUT,
    TRACKING_TIMEOUT,
    TRACKING_TIMEOUT_HELP,
)

#: An increment's name: a sortable UTC timestamp by default (``20261203T174512Z``); names sort in time order.
INCREMENT_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")


def increment_selection(text: str) -> str:
    """``--increments``: ``none``, ``all``, or an increment name UNTIL (that one and every earlier one)."""
    value = text.strip()
    if value.lower() in ("none", "all"):
        return value.lower()
    if not INCREMENT_NAME.match(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not none, all or an increment name like 20261203T174512Z")
    return value


def ngram_range(text: str) -> tuple[int, ...]:
    """``--wide-char-ngrams``: ``MIN-MAX`` character n-gram lengths (``3-5``), a single length, or
    ``none`` (the empty tuple)."""
    value = text.strip().lower()
    if value == "none":
        return ()
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", value)
    low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
    if not 1 <= low <= high <= 8:
        raise argparse.ArgumentTypeError(f"{text!r} is not none or MIN-MAX character n-gram lengths between 1 and 8 "
                                         "(e.g. 3-5)")
    return tuple(range(low, high + 1))


#: Thread pools default to the container's CPU limit (rakuten_common.cpu), not the node's cores;
#: read when the parser is built, so CPU_LIMIT set by then counts.
_CPU_LIMIT = "the CPU limit (CPU_LIMIT, cgroup quota or usable CPUs)"

#: The wide part's regularisers (the solver's C) tried on the validation split, per solver.
WIDE_REGULARISERS = {"linearsvc": (0.5, 1.0, 2.0), "logreg": (10.0, 30.0, 100.0)}

#: Image backbones: name -> (keras.applications constructor, input rescaling (scale, offset)).
BACKBONES = {
    "mobilenet_v2": ("MobileNetV2", (1 / 127.5, -1.0)),
    "efficientnet_b0": ("EfficientNetB0", (1.0, 0.0)),  # has its own normalisation layers
}


@dataclass(frozen=True)
class ModelConfig:
    """The concatenated model's architecture (``training_job.training.model``)."""

    image_size: int = option(128, env="IMAGE_SIZE", type=AT_LEAST_ONE, help="image side in pixels")
    max_tokens: int = option(100_000, env="MAX_TOKENS", type=AT_LEAST_ONE,
                             help="text vocabulary: the most frequent word 1- and 2-grams kept")
    sequence_length: int = option(256, env="SEQUENCE_LENGTH", type=AT_LEAST_ONE,
                                  help="leading tokens of a product's text the drift profile's out-of-vocabulary "
                                       "share looks at (the text branch itself reads every token)")
    backbone: str = option("cnn", env="IMAGE_BACKBONE", choices=("cnn", *BACKBONES),
                           help="image branch: a small CNN, or a keras.applications backbone")
    backbone_weights: Path | None = option(None, env="BACKBONE_WEIGHTS", type=Path, metavar="FILE",
                                           help="pretrained weights file for --backbone (then frozen); "
                                                "nothing is ever downloaded")
    wide_solver: str = option("linearsvc", env="WIDE_SOLVER", choices=("linearsvc", "logreg", "none"),
                              help="text branch's wide part: a linear layer on the TF-IDF n-grams whose weights this "
                                   "convex solver fits on the training split (regulariser chosen on the validation "
                                   "split), its logits fused with the deep branches' (none: deep branches only)")
    wide_char_ngrams: tuple[int, ...] = option((3, 4, 5), env="WIDE_CHAR_NGRAMS", type=ngram_range,
                                               metavar="MIN-MAX|none", shown="3-5",
                                               help="character n-gram lengths the wide part reads beside the word "
                                                    "n-grams (a second in-graph TF-IDF bag; none: words only)")
    wide_char_tokens: int = option(150_000, env="WIDE_CHAR_TOKENS", type=AT_LEAST_ONE,
                                   help="the wide part's character n-grams: the most frequent kept")
    num_classes: int = 27
    text_ngrams: int = 2
    text_units: int = 256
    text_token_dropout: float = 0.2
    text_dropout: float = 0.5
    image_filters: tuple[int, ...] = (16, 32, 64)
    fusion_units: int = 256
    dropout: float = 0.3
    branches: tuple[str, ...] = ("text", "image")


@dataclass(frozen=True)
class QualityConfig:
    """Data-quality rules checked before training (``training_job.data.quality``); a violation fails the job."""

    max_missing_images: float = option(0.05, env="MAX_MISSING_IMAGES", type=SHARE, metavar="SHARE",
                                       help="fail when more rows than this share have no image file (1: never)")
    max_unreadable_images: float = option(0.05, env="MAX_UNREADABLE_IMAGES", type=SHARE, metavar="SHARE",
                                          help="fail when more image files than this share cannot be decoded "
                                               "(fewer: those rows are left out; 1: never)")
    max_unknown_codes: float = option(0.0, env="MAX_UNKNOWN_CODES", type=SHARE, metavar="SHARE",
                                      help="fail when more rows than this share have a prdtypecode outside the 27 "
                                           "(fewer: those rows are left out)")
    min_class_rows: int = option(1, env="MIN_CLASS_ROWS",
                                 help="fail when one of the 27 classes has fewer rows (0: never)")
    max_duplicate_products: float = option(1.0, env="MAX_DUPLICATE_PRODUCTS", type=SHARE, metavar="SHARE",
                                           help="fail when more rows than this share repeat an earlier productid "
                                                "(1: never)")
    max_imbalance_ratio: float = option(0.0, env="MAX_IMBALANCE_RATIO",
                                        help="fail when the largest class has more than this many times the rows "
                                             "of the smallest (0: never)")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, schedule, tracking and publishing."""

    data_dir: str = option("data/sample", env="DATA_DIR", metavar="DIR|URI",
                           help="dataset in the raw Rakuten layout (X_train_update.csv, Y_train_CVw08PX.csv, "
                                "images/image_train/): a folder or s3://bucket/prefix")
    model_uri: str = option(f"model-store/{MODEL_NAME}", env="MODEL_URI", metavar="URI",
                            help="where versions are published: a folder or s3://bucket/prefix")
    increments: str = option("all", env="INCREMENTS", type=increment_selection, metavar="none|all|UNTIL",
                             help="dataset increments (DATA_DIR/increments/<name>/, those with a manifest) trained on "
                                  "with the base: none, all, or UNTIL (that increment and every earlier one)")
    generate_sample: int = option(0, env="GENERATE_SAMPLE_ROWS", metavar="ROWS",
                                  help="first write a sample dataset of about ROWS rows into --data-dir "
                                       "(a folder) if it holds none (0: never)")
    epochs: int = option(15, env="EPOCHS", type=AT_LEAST_ONE,
                         help="most training epochs (early stopping usually ends sooner)")
    batch_size: int = option(256, env="BATCH_SIZE", type=AT_LEAST_ONE, help="products per training step")
    learning_rate: float = option(2e-3, env="LEARNING_RATE", type=POSITIVE, help="Adam learning rate")
    val_fraction: float = option(0.1, env="VAL_FRACTION", type=bounded(float, 0.0, 0.5),
                                 help="stratified validation share of the rows outside the evaluation split "
                                      "(early stopping)")
    eval_fraction: float = option(0.1, env="EVAL_FRACTION", type=bounded(float, 0.0, 0.5),
                                  help="share of products in the fixed evaluation split (by productid hash); "
                                       "never trained on; the promotion gate scores on it")
    patience: int = option(3, env="PATIENCE", type=COUNT,
                           help="epochs without a better validation weighted F1 before stopping "
                                "(the best epoch's weights are kept)")
    max_rows: int = option(0, env="MAX_ROWS", type=COUNT, help="use only the first N rows (0: all)")
    ablation: bool = option(False, env="ABLATION",
                            help="also train text-only and image-only models (nested MLflow runs)")
    promote: bool = option(False, env="PROMOTE",
                           help="then judge the new version with the promotion gate, promote it and roll it out "
                                "(python -m training_job.promote; its settings from the environment)")
    seed: int = option(0, env="SEED", help="random seed of the split, the shuffling and the weights")
    experiment: str = option(MODEL_NAME, env="MLFLOW_EXPERIMENT_NAME", help="MLflow experiment")
    tracking_timeout: int = option(DEFAULT_TRACKING_TIMEOUT, env="TRACKING_TIMEOUT", type=TRACKING_TIMEOUT,
                                   metavar="SECONDS", help=TRACKING_TIMEOUT_HELP)
    version: str | None = option(None, env="MODEL_VERSION", metavar="ID", shown="a UTC timestamp",
                                 help="version id to publish")
    cache_dir: Path = option(Path(tempfile.gettempdir()) / "rakuten-cache", env="CACHE_DIR", metavar="DIR",
                             help="decoded images and downloaded datasets are kept here between runs")
    tf_intra_op_threads: int = option(default_factory=available_cpus, env="TF_INTRA_OP_THREADS", shown=_CPU_LIMIT,
                                      help="threads working inside one model op (TF intra-op pool)")
    tf_inter_op_threads: int = option(default_factory=available_cpus, env="TF_INTER_OP_THREADS", shown=_CPU_LIMIT,
                                      help="model ops run at once (TF inter-op pool)")
    model: ModelConfig = field(default_factory=ModelConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    image_workers: int = field(default_factory=available_cpus)

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"--eval-fraction must be at least 0 and below 1, got {self.eval_fraction}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("--epochs, --batch-size and --patience must be at least 1")
