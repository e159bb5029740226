"""Deterministic sample data in the exact layout of the Rakuten France challenge.

Writes ``X_train_update.csv`` (unnamed index, designation, description, productid, imageid),
``Y_train_CVw08PX.csv`` (unnamed index, prdtypecode) and
``images/image_train/image_<imageid>_product_<productid>.jpg`` (500x500 JPEG), plus the
matching ``X_test_update.csv`` / ``images/image_test`` split, so the loader runs unchanged
on the real set.

The products themselves come from ``rakuten_common.synthetic`` (see there how the class
signal is split between text and image, so that only a fused model does well).

    python -m training_job.sample_data --out data/sample --rows 2700
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np

from rakuten_common.data_layout import TEST, TRAIN, X_COLUMNS, Split
from rakuten_common.labels import PRDTYPECODES, TRAIN_COUNTS
from rakuten_common.logs import configure_logging
from rakuten_common.synthetic import make_image, make_text

logger = logging.getLogger("rakuten.sample_data")
REAL_TRAIN_ROWS = 84_916
#: The test split's true labels (``,prdtypecode``, same index as X_test_update.csv): not part of the
#: real layout (the challenge never published them); written on request, for the data-loop demo.
TEST_TRUTH_CSV = "Y_test_truth.csv"


def class_counts(rows: int, minimum: int = 6) -> dict[int, int]:
    """Per-class row counts proportional to the real set's imbalance (at least ``minimum``)."""
    counts = {code: max(minimum, round(rows * n / REAL_TRAIN_ROWS)) for code, n in TRAIN_COUNTS.items()}
    return counts


def _write_split(out: Path, split: Split, codes: list[int], rng: np.random.Generator,
                 first_index: int, missing_images: int, image_size: int) -> list[list]:
    (out / split.image_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    skip = set(rng.choice(len(codes), size=min(missing_images, len(codes)), replace=False).tolist())
    for position, code in enumerate(codes):
        index = first_index + position
        productid, imageid = 200_000_000 + index * 7, 1_000_000_000 + index * 13
        designation, description = make_text(rng, code)
        image = make_image(rng, code, image_size)
        if position not in skip:
            image.save(split.image_path(out, imageid, productid), quality=85)
        rows.append([index, designation, description, productid, imageid])
        if (position + 1) % 500 == 0 or position + 1 == len(codes):
            logger.info("%s: %d/%d products written", split.name, position + 1, len(codes))
    return rows


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])


def generate(out: Path, rows: int = 2700, test_rows: int = 0, seed: int = 0,
             missing_images: int = 0, image_size: int = 500, test_truth: bool = False) -> Path:
    """Write a sample dataset of about ``rows`` training rows under ``out``; return ``out``.
    ``test_truth``: also write the test split's true labels (``TEST_TRUTH_CSV``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    codes = [code for code, n in class_counts(rows).items() for _ in range(n)]
    rng.shuffle(codes)
    header = ["", *X_COLUMNS]
    _write_csv(out / TRAIN.features_csv, header, _write_split(out, TRAIN, codes, rng, 0, missing_images, image_size))
    _write_csv(out / TRAIN.labels_csv, ["", "prdtypecode"], [[i, c] for i, c in enumerate(codes)])
    if test_rows:
        test_codes = rng.choice(list(PRDTYPECODES), size=test_rows).tolist()
        _write_csv(out / TEST.features_csv, header, _write_split(out, TEST, test_codes, rng, len(codes), 0, image_size))
        if test_truth:
            _write_csv(out / TEST_TRUTH_CSV, ["", "prdtypecode"],
                       [[len(codes) + i, c] for i, c in enumerate(test_codes)])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_job.sample_data",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="dataset folder")
    parser.add_argument("--rows", type=int, default=2700, help="approximate training rows")
    parser.add_argument("--test-rows", type=int, default=100, help="rows of the unlabelled test split")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--missing-images", type=int, default=0,
                        help="leave out this many training images (to exercise the loader's report)")
    parser.add_argument("--test-truth", action="store_true",
                        help=f"also write the test split's true labels ({TEST_TRUTH_CSV}, not in the real layout)")
    args = parser.parse_args(argv)
    configure_logging()
    logger.info("Generating sample Rakuten data into %s (seed %d)", args.out, args.seed)
    generate(args.out, args.rows, args.test_rows, args.seed, args.missing_images, test_truth=args.test_truth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
