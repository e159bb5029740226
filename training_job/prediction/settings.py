"""Batch prediction's settings, each declared once (``python -m training_job.batch_predict --help``)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.cpu import available_cpus
from rakuten_common.options import option


@dataclass(frozen=True)
class BatchPredictConfig:
    model_uri: str = option("", env="MODEL_URI", metavar="URI",
                            help="the model: a version folder, a prefix of versions (its champion), local or "
                                 "s3://, or models:/rakuten-classifier@champion")
    data_dir: str = option("", env="DATA_DIR", metavar="DIR|URI",
                           help="dataset with X_test_update.csv and images/image_test/: a folder or s3://bucket/prefix")
    output: str = option("", env="OUTPUT", metavar="FILE|URI", help="the CSV to write: a path or s3://bucket/key.csv")
    top_k: int = option(1, env="TOP_K", help="codes per product, best first")
    batch_size: int = option(64, env="BATCH_SIZE", help="products per model call")
    workers: int = option(default_factory=available_cpus, env="PREPROCESS_WORKERS", shown="the CPU limit",
                          help="threads decoding images")
    cache_dir: Path = option(Path(tempfile.gettempdir()) / "rakuten-cache", env="CACHE_DIR", metavar="DIR",
                             help="where s3:// models and datasets are copied")
