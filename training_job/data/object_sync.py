"""Parallel, resumable copies of many files between a local folder and an S3 prefix.

Used for datasets (two CSVs and tens of thousands of JPEGs). A file is skipped when the other
side already holds it with the same size, so an interrupted copy resumes where it stopped.
Downloads land in ``<name>.partial`` and are renamed when complete; an S3 upload is atomic per
object. Progress is logged every few seconds (files, bytes, rate, time left).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rakuten_common.storage import StorageError

logger = logging.getLogger("rakuten.datasets")


@dataclass
class SyncResult:
    copied: int
    skipped: int
    bytes: int
    seconds: float


class Progress:
    """Thread-safe counters, logged at most every ``interval`` seconds."""

    def __init__(self, what: str, files: int, total_bytes: int, interval: float = 5.0):
        self.what, self.files, self.total_bytes, self.interval = what, files, total_bytes, interval
        self.done = self.done_bytes = 0
        self.started = self.last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        with self._lock:
            self.done += 1
            self.done_bytes += size
            now = time.monotonic()
            if now - self.last >= self.interval or self.done == self.files:
                self.last = now
                rate = self.done / max(now - self.started, 1e-9)
                left = (self.files - self.done) / rate if rate else 0
                logger.info("  %s: %d/%d files, %.1f/%.1f MB, %.0f files/s, %.0f s left", self.what, self.done,
                            self.files, self.done_bytes / 1e6, self.total_bytes / 1e6, rate, left)


def list_objects(client, bucket: str, prefix: str) -> dict[str, int]:
    """``{key relative to prefix: size}`` of every object under ``s3://bucket/prefix/``."""
    from botocore.exceptions import BotoCoreError, ClientError

    base = f"{prefix}/" if prefix else ""
    found: dict[str, int] = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for item in page.get("Contents", []):
                found[item["Key"][len(base):]] = item["Size"]
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"cannot list s3://{bucket}/{base}: {exc}") from None
    return found


def _run(jobs: list[tuple[str, int]], copy: Callable[[str], None], what: str, workers: int,
         skipped: int) -> SyncResult:
    total = sum(size for _, size in jobs)
    progress = Progress(what, len(jobs), total)
    if jobs:
        logger.info("%s: %d files (%.1f MB) to copy, %d already there", what, len(jobs), total / 1e6, skipped)
    with ThreadPoolExecutor(workers, thread_name_prefix="sync") as pool:
        futures = {pool.submit(copy, key): (key, size) for key, size in jobs}
        for future in as_completed(futures):
            key, size = futures[future]
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - one bad object stops the copy, naming it
                for other in futures:
                    other.cancel()
                raise StorageError(f"{what}: copying {key} failed: {exc}") from exc
            progress.add(size)
    return SyncResult(len(jobs), skipped, total, time.monotonic() - progress.started)


def download(client, bucket: str, prefix: str, wanted: dict[str, int], root: Path, what: str,
             workers: int = 16) -> SyncResult:
    """Copy ``wanted`` (``{relative key: size}``) from S3 into ``root``, skipping files of the same size."""
    root = Path(root)
    base = f"{prefix}/" if prefix else ""
    jobs, skipped = [], 0
    for key, size in sorted(wanted.items()):
        target = root / key
        if target.is_file() and target.stat().st_size == size:
            skipped += 1
        else:
            jobs.append((key, size))

    def copy(key: str) -> None:
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        client.download_file(bucket, base + key, str(partial))
        os.replace(partial, target)

    return _run(jobs, copy, what, workers, skipped)


def upload(client, root: Path, files: list[str], bucket: str, prefix: str, what: str,
           workers: int = 16) -> SyncResult:
    """Copy ``files`` (paths relative to ``root``) to S3, skipping objects already there with the same size."""
    root = Path(root)
    base = f"{prefix}/" if prefix else ""
    present = list_objects(client, bucket, prefix)
    jobs, skipped = [], 0
    for name in files:
        size = (root / name).stat().st_size
        if present.get(name) == size:
            skipped += 1
        else:
            jobs.append((name, size))

    def copy(name: str) -> None:
        client.upload_file(str(root / name), bucket, base + name)

    return _run(jobs, copy, what, workers, skipped)
