"""Where a dataset comes from: a local folder, or ``s3://bucket/prefix`` holding the raw Rakuten layout.

An S3 dataset is copied into a local cache folder (``<cache>/datasets/<bucket>/<prefix>/``) in
the same layout, so the loader reads it unchanged: the split's CSV files first, then, in
parallel, the images its rows name (files already cached with the right size are skipped, so an
interrupted copy resumes). S3 access uses the same variables as models (``AWS_*``, ``S3_*``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from rakuten_common.data_layout import Split
from rakuten_common.storage import StorageError, s3_client, split_s3_uri
from training_job.data.dataset import DatasetError, image_paths, read_split
from training_job.data.object_sync import download, list_objects

logger = logging.getLogger("rakuten.datasets")

IMAGE_NAME = re.compile(r"image_\d+_product_\d+\.jpg")


def is_remote(data_uri: str | Path) -> bool:
    return str(data_uri).startswith("s3://")


def local_dataset(data_uri: str | Path, cache_dir: Path, split: Split, workers: int = 16) -> Path:
    """A local folder holding ``split`` of the dataset at ``data_uri`` (the folder itself if local)."""
    if not is_remote(data_uri):
        return Path(data_uri)
    bucket, prefix = split_s3_uri(str(data_uri))
    root = Path(cache_dir) / "datasets" / bucket / prefix
    client = s3_client(max_pool_connections=workers)
    try:
        listing = list_objects(client, bucket, prefix)
    except StorageError as exc:
        raise DatasetError(f"dataset {data_uri} cannot be read: {exc}") from None
    csvs = [name for name in (split.features_csv, split.labels_csv) if name]
    absent = [name for name in csvs if name not in listing]
    if absent:
        raise DatasetError(f"dataset {data_uri} has no {', '.join(absent)} "
                           f"({len(listing)} objects under it): expected the raw Rakuten layout")
    logger.info("Copying dataset %s (%s split) into %s", data_uri, split.name, root)
    try:
        download(client, bucket, prefix, {name: listing[name] for name in csvs}, root, "CSV files", workers)
        table = read_split(root, split)
        wanted = {}
        for path in image_paths(root, table, split):
            key = path.relative_to(root).as_posix()
            if key in listing and IMAGE_NAME.fullmatch(path.name):
                wanted[key] = listing[key]
        download(client, bucket, prefix, wanted, root, f"{split.image_dir}", workers)
    except StorageError as exc:
        raise DatasetError(f"dataset {data_uri}: {exc} (run again to resume)") from None
    return root
