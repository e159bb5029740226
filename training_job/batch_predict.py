"""Batch predictions: classify a whole test split with a published model into a CSV file.

    python -m training_job.batch_predict --model-uri URI --data-dir DIR --output FILE.csv [--top-k K]

Reads ``X_test_update.csv`` and ``images/image_test/`` (a folder or ``s3://bucket/prefix``),
pre-processes with the one shared implementation (``product_text``, ``decode_image``), runs the
model in batches through the same traced call as the server, and writes one row per product:
``productid,prdtypecode,probability`` (top-1), then ``prdtypecode_2,probability_2``... up to
``--top-k``. The output is a local path or ``s3://bucket/key.csv``. Products whose image file is
missing or unreadable are reported (count and first productids) and left out of the file.
Exit codes: 0 written, 1 the data, the model or the storage is wrong (one-line reason).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from rakuten_common.errors import RakutenError
from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args
from training_job.prediction.settings import BatchPredictConfig

logger = logging.getLogger("rakuten.batch_predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_job.batch_predict", formatter_class=HelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    add_options(parser, BatchPredictConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    config = from_args(BatchPredictConfig, parser.parse_args(argv))
    missing = [flag for flag, value in (("--model-uri", config.model_uri), ("--data-dir", config.data_dir),
                                        ("--output", config.output)) if not value]
    if missing:
        parser.error(f"{', '.join(missing)} required (or the environment variables named in --help)")
    configure_logging()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training_job.prediction.predictions import run

    configure_logging()  # again: importing TensorFlow may install its own handlers
    try:
        run(config)
    except RakutenError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
