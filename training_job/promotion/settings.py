"""The promotion's settings, each declared once: ``python -m training_job.promote`` parses them,
a training run with ``--promote`` reads them from the environment."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.cpu import available_cpus
from rakuten_common.options import option
from rakuten_common.tracking_server import TRACKING_TIMEOUT, TRACKING_TIMEOUT_HELP
from training_job.config import TrainConfig, increment_selection

#: Products per model call when re-scoring.
EVAL_BATCH_SIZE = 64


def _training_default(name: str):
    """The training job's default of a setting both share (declared once, in TrainConfig)."""
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


@dataclass(frozen=True)
class PromoteConfig:
    force: bool = option(False, help="promote the challenger without judging it (recorded as forced)")
    to: str = option("", metavar="VERSION",
                     help="make this registry version (number, or model version id) champion: a rollback, not judged")
    tolerance: float = option(0.01, env="PROMOTE_TOLERANCE",
                              help="promote when the challenger's weighted F1 is at least the champion's minus this")
    recall_floor: float = option(0.2, env="PROMOTE_RECALL_FLOOR",
                                 help="refuse when a class's recall falls below this (and below the champion's)")
    min_class_support: int = option(5, env="PROMOTE_MIN_CLASS_SUPPORT",
                                    help="classes with fewer evaluation rows are not held to the recall floor")
    data_dir: str = option(_training_default("data_dir"), env="DATA_DIR", metavar="DIR|URI",
                           help="dataset whose evaluation split both models are scored on: a folder or s3://")
    increments: str = option(_training_default("increments"), env="INCREMENTS", type=increment_selection,
                             metavar="none|all|UNTIL",
                             help="dataset increments read with the base, as in training: none, all or UNTIL")
    eval_fraction: float = option(_training_default("eval_fraction"), env="EVAL_FRACTION",
                                  help="share of products in the evaluation split (as in training)")
    cache_dir: Path = option(_training_default("cache_dir"), env="CACHE_DIR", metavar="DIR",
                             help="where s3:// datasets and models are copied")
    workers: int = option(default_factory=available_cpus, env="PREPROCESS_WORKERS", shown="the CPU limit",
                          help="threads decoding images")
    experiment: str = option("rakuten-classifier-promotions", env="PROMOTIONS_EXPERIMENT",
                             help="MLflow experiment recording every decision")
    tracking_timeout: int = option(_training_default("tracking_timeout"), env="TRACKING_TIMEOUT",
                                   type=TRACKING_TIMEOUT, metavar="SECONDS", help=TRACKING_TIMEOUT_HELP)
