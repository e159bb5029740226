"""Corrected labels -> a new dataset increment, with its audit trail.

    python -m training_job.add_labels --captures URI --labels FILE.csv --dataset s3://datasets/rakuten
        [--since DATE] [--increment NAME]

Joins each labels row (``prdtypecode`` plus ``productid``, else ``request_id``; a filled-in
review queue works as is) with the captured records, then writes
``DATASET/increments/<name>/`` in the raw layout (``X_train_update.csv``, ``Y_train_CVw08PX.csv``,
``images/image_train/``) and ``manifest.json`` last: source capture files, labels file SHA-256,
rows added and skipped with reasons, time, code version. The data-quality checks run first; a
failing increment is not written. Increments are immutable: an existing name is refused.
Training reads the base and every complete increment (``--increments``, env ``INCREMENTS``).
Exit codes: 0 written, 1 refused or unreadable input (one-line reason).
"""
from __future__ import annotations

import argparse
import logging
import sys

from rakuten_common.errors import RakutenError
from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args
from training_job.data.settings import AddLabelsConfig

logger = logging.getLogger("rakuten.add_labels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_job.add_labels", formatter_class=HelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    add_options(parser, AddLabelsConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    config = from_args(AddLabelsConfig, parser.parse_args(argv))
    missing = [flag for flag, value in (("--captures", config.captures), ("--labels", config.labels),
                                        ("--dataset", config.dataset)) if not value]
    if missing:
        parser.error(f"{', '.join(missing)} required (or the environment variables named in --help)")
    configure_logging()
    from training_job.data.feedback import write_increment
    from training_job.training.tracking import git_commit

    configure_logging()  # again: importing MLflow installs its own handlers
    try:
        result = write_increment(config, git_commit())
    except RakutenError as exc:
        logger.error("%s", exc)
        return 1
    manifest = result.manifest
    skipped = ", ".join(f"{n} {why}" for why, n in manifest["rows_skipped"].items())
    logger.info("Increment %s written: %d rows added, %d skipped%s; from %d capture files, labels sha256 %s",
                result.uri, manifest["rows_added"], sum(manifest["rows_skipped"].values()),
                f" ({skipped})" if skipped else "", len(manifest["source_capture_files"]),
                manifest["labels_sha256"][:12])
    return 0


if __name__ == "__main__":
    sys.exit(main())
