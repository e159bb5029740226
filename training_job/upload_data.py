"""Upload a local dataset in the raw Rakuten layout to S3/MinIO, in parallel and resumably.

    python -m training_job.upload_data SRC_DIR s3://bucket/prefix

Uploads the CSV files present (X_train_update.csv, Y_train_CVw08PX.csv, X_test_update.csv) and
the JPEGs of images/image_train/ and images/image_test/; objects already there with the same size
are skipped, so an interrupted upload resumes. Images go first and the CSV files last, so a
training run never sees CSV rows whose images are still on their way. S3 settings: AWS_*, S3_*
as everywhere else. Exit codes: 0 uploaded (or nothing to do), 1 error (one line naming it).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rakuten_common.data_layout import TEST, TRAIN
from rakuten_common.logs import configure_logging
from rakuten_common.storage import StorageError, s3_client, split_s3_uri
from training_job.data.source import IMAGE_NAME

logger = logging.getLogger("rakuten.datasets")


def dataset_files(root: Path) -> tuple[list[str], list[str]]:
    """``(images, csv_files)`` of ``root`` in the raw layout, as paths relative to ``root``."""
    csvs = [name for split in (TRAIN, TEST) for name in (split.features_csv, split.labels_csv)
            if name and (root / name).is_file()]
    images = sorted(f"{split.image_dir}/{p.name}" for split in (TRAIN, TEST) if (root / split.image_dir).is_dir()
                    for p in (root / split.image_dir).iterdir() if IMAGE_NAME.fullmatch(p.name) and p.is_file())
    return images, csvs


def upload_dataset(root: Path, uri: str, workers: int = 16, create_bucket: bool = False) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from training_job.data.object_sync import upload

    root = Path(root)
    images, csvs = dataset_files(root)
    if TRAIN.features_csv not in csvs and TEST.features_csv not in csvs:
        raise StorageError(f"{root} holds neither {TRAIN.features_csv} nor {TEST.features_csv}: "
                           "expected the raw Rakuten layout")
    bucket, prefix = split_s3_uri(uri)
    client = s3_client(max_pool_connections=workers)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound") or not create_bucket:
            raise StorageError(f"bucket {bucket} cannot be used ({exc}); "
                               "create it first, or pass --create-bucket") from None
        client.create_bucket(Bucket=bucket)
        logger.info("Created bucket %s", bucket)
    except BotoCoreError as exc:
        raise StorageError(f"S3 endpoint unreachable: {exc}") from None
    logger.info("Uploading %s to %s: %d images, then %s", root, uri, len(images), ", ".join(csvs))
    done = upload(client, root, images, bucket, prefix, "images", workers)
    upload(client, root, csvs, bucket, prefix, "CSV files", workers)
    logger.info("Done: %s holds the dataset (%d images copied, %d already there, %.1f MB in %.0f s)",
                uri, done.copied, done.skipped, done.bytes / 1e6, done.seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_job.upload_data",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("source", type=Path, help="local dataset folder (e.g. the challenge's files, unzipped)")
    parser.add_argument("uri", help="destination s3://bucket/prefix")
    parser.add_argument("--workers", type=int, default=16, help="parallel uploads")
    parser.add_argument("--create-bucket", action="store_true", help="create the bucket if it does not exist")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        upload_dataset(args.source, args.uri, args.workers, args.create_bucket)
    except StorageError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
