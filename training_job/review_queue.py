"""The review queue: captured products the model was least sure of, for people to label.

    python -m training_job.review_queue --captures URI --since DATE [--max-confidence 0.5] [--per-class N]
        [--control N] --output FILE.csv

Reads the predictor's capture files (a folder or ``s3://bucket/prefix``) of DATE and later and
writes one row per product: ``sample`` (``uncertain``, least confident first, at most N per
predicted code; then ``control``, a seeded random draw of the confident ones), ``productid``,
``request_id``, ``designation``, ``description``, ``image_key`` (below the capture prefix),
``model_version``, ``time``, the top-3 ``code_i``/``probability_i`` and an empty
``prdtypecode`` for the reviewer. ``python -m training_job.add_labels`` reads it back.
Capture files cut in the middle or holding bad lines are counted, never fatal.
Exit codes: 0 written, 1 the captures cannot be read (one-line reason).
"""
from __future__ import annotations

import argparse
import logging
import sys

from rakuten_common.errors import RakutenError
from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args
from training_job.data.settings import ReviewQueueConfig

logger = logging.getLogger("rakuten.review_queue")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_job.review_queue", formatter_class=HelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    add_options(parser, ReviewQueueConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    config = from_args(ReviewQueueConfig, parser.parse_args(argv))
    missing = [flag for flag, value in (("--captures", config.captures), ("--since", config.since),
                                        ("--output", config.output)) if not value]
    if missing:
        parser.error(f"{', '.join(missing)} required")
    configure_logging()
    from training_job.data.capture_files import read_captures
    from training_job.data.review import build_queue, write_queue

    try:
        read = read_captures(config.captures, config.since)
    except RakutenError as exc:
        logger.error("%s", exc)
        return 1
    rows, counts = build_queue(read.captured, config.max_confidence, config.per_class, config.control, config.seed)
    write_queue(rows, config.output)
    left_out = ", ".join(f"{n} {what}" for what, n in counts.items() if "left out" in what and n)
    logger.info("Review queue %s: %d rows (%d uncertain at top-1 probability <= %g, %d control) from %d products"
                "%s", config.output, len(rows), counts["uncertain"], config.max_confidence, counts["control"],
                counts["products"], f"; {left_out}" if left_out else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
