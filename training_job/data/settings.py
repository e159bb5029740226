"""Settings of the data-loop commands, each declared once (``--help`` of ``python -m
training_job.review_queue`` and ``python -m training_job.add_labels``)."""
from __future__ import annotations

import argparse
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.options import COUNT, SHARE, option
from training_job.config import INCREMENT_NAME


def day(text: str) -> str:
    """A ``YYYY-MM-DD`` date (capture files are partitioned by UTC day)."""
    value = text.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-12-03")
    return value



def increment_name(text: str) -> str:
    if not INCREMENT_NAME.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid increment name (letters, digits, . _ -)")
    return text.strip()


_CACHE = Path(tempfile.gettempdir()) / "rakuten-cache"


@dataclass(frozen=True)
class ReviewQueueConfig:
    captures: str = option("", env="CAPTURE_URI", metavar="URI",
                           help="the predictor's capture prefix: a folder or s3://bucket/prefix")
    since: str | None = option(None, type=day, metavar="YYYY-MM-DD", help="read the captures of this UTC day and later", shown="required")
    output: Path | None = option(None, type=Path, metavar="FILE.csv", help="the queue to write", shown="required")
    max_confidence: float = option(0.5, type=SHARE, metavar="PROB",
                                   help="products whose top-1 probability is at most this are 'uncertain'")
    per_class: int = option(50, type=COUNT, help="at most this many uncertain products per predicted code (0: no cap)")
    control: int = option(20, type=COUNT,
                          help="confident products drawn at random as a control sample (the model's real accuracy)")
    seed: int = option(0, help="seed of the control sample's draw")


@dataclass(frozen=True)
class AddLabelsConfig:
    captures: str = option("", env="CAPTURE_URI", metavar="URI",
                           help="the predictor's capture prefix: a folder or s3://bucket/prefix")
    labels: Path | None = option(None, type=Path, metavar="FILE.csv",
                                 help="corrected labels: prdtypecode plus productid and/or request_id per row "
                                      "(a filled-in review queue)", shown="required")
    dataset: str = option("", env="DATA_DIR", metavar="DIR|URI",
                          help="the dataset to add an increment to: a folder or s3://bucket/prefix")
    since: str | None = option(None, type=day, metavar="YYYY-MM-DD", help="only join captures of this UTC day and later", shown="every day")
    increment: str | None = option(None, type=increment_name, metavar="NAME", shown="the UTC time, e.g. 20261203T174512Z",
                                   help="name of the new increment (refused if it exists: increments are immutable)")
    max_unreadable_images: float = option(0.05, env="MAX_UNREADABLE_IMAGES", type=SHARE, metavar="SHARE",
                                          help="refuse the increment when more of its images than this share "
                                               "cannot be decoded")
    max_duplicate_products: float = option(1.0, env="MAX_DUPLICATE_PRODUCTS", type=SHARE, metavar="SHARE",
                                           help="refuse the increment when more of its products than this share are "
                                                "already in the dataset (1: never; training keeps the latest label)")
    cache_dir: Path = option(_CACHE, env="CACHE_DIR", metavar="DIR", help="scratch space for the checks")
