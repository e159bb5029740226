"""Writing one batch of sampled products to the capture store: each new image once
(``images/<sha256>.jpg``), then the batch's records as one immutable file per day
(``captures/date=YYYY-MM-DD/<pod>-<seq>.jsonl.gz``, a conditional write that never replaces a file);
a batch that takes longer than a flush period to write is stored as one file per period.

``CaptureFiles`` is what the capture writer process runs (``model_server.capture_process``); it
needs no TensorFlow, no KServe and no metrics: it returns what happened as an ``Outcome`` and the
server counts and logs it.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rakuten_common.captures import (
    CONTENT_HASHES,
    CaptureError,
    CaptureRecord,
    image_key,
    image_sha256,
    records_key,
    text_sha256,
    write_capture_file,
)
from rakuten_common.storage import KeyExists, S3Store, StorageError, Store, open_store, s3_client, split_s3_uri

logger = logging.getLogger("rakuten.capture")

#: Image hashes remembered as stored (about 200 bytes each): an image seen again is not uploaded again.
RECENT_IMAGES = 20_000
#: The capture writer's S3 client: short timeouts, two attempts (a dead endpoint fails a batch in seconds).
CONNECT_TIMEOUT, READ_TIMEOUT, ATTEMPTS = 2.0, 10.0, 2
#: Names tried for one file before giving up (each taken name means another writer used it).
MAX_NAME_TRIES = 100


@dataclass
class Sampled:
    """One sampled product as the request path leaves it: raw pieces, nothing computed."""

    request_id: str
    productid: int | None
    designation: str
    description: str
    image: bytes
    top_k: list
    model_version: str
    time: float  # seconds since the epoch
    size: int


@dataclass
class Outcome:
    """What writing one batch did: records and files written or failed, and why (lines to log)."""

    written: int = 0
    failed: int = 0
    files_written: int = 0
    files_failed: int = 0
    problems: list[str] = field(default_factory=list)
    next_seq: int = 0
    budget_wait_seconds: float = 0.0  # waited to keep to the writer process's CPU budget
    final: bool = True  # False: a file of a batch still being written (``CaptureFiles.write``'s ``progress``)

    def add(self, other: Outcome) -> None:
        """Count ``other``'s records, files and waits in this one."""
        self.written += other.written
        self.failed += other.failed
        self.files_written += other.files_written
        self.files_failed += other.files_failed
        self.problems += other.problems
        self.budget_wait_seconds += other.budget_wait_seconds


def open_capture_store(uri: str) -> Store:
    """The store of ``--capture_uri``; for S3 with the writer's short timeouts and two attempts."""
    if uri.startswith("s3://"):
        bucket, prefix = split_s3_uri(uri)
        store = S3Store(bucket, prefix, client=s3_client(max_pool_connections=2, connect_timeout=CONNECT_TIMEOUT,
                                                         read_timeout=READ_TIMEOUT))
        store.attempts, store.backoff = ATTEMPTS, 0.2
        return store
    return open_store(uri)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class CaptureFiles:
    """Writes batches of ``Sampled`` products into ``store`` as files named ``<name>-<seq>``."""

    def __init__(self, store: Store, content: str, name: str, seq: int = 0, pace: Callable[[], object] = lambda: None,
                 file_seconds: float = float("inf"), clock: Callable[[], float] = time.monotonic):
        """``pace`` is called before each upload (the writer process's CPU budget waits there);
        ``file_seconds``: a batch whose images take longer than this to upload is stored as several
        files, one each ``file_seconds`` of writing (a writer held back by its budget still stores
        its records every period)."""
        self.store, self.content, self.name, self.seq, self.pace = store, content, name, seq, pace
        self.file_seconds, self._clock = file_seconds, clock
        self._recent: OrderedDict[str, None] = OrderedDict()

    def record(self, item: Sampled) -> CaptureRecord:
        hashes = self.content == CONTENT_HASHES
        return CaptureRecord(
            request_id=item.request_id, productid=item.productid,
            designation=None if hashes else item.designation, description=None if hashes else item.description,
            text_sha256=text_sha256(item.designation, item.description), image_sha256=image_sha256(item.image),
            model_version=item.model_version, top_k=tuple((code, min(1.0, max(0.0, p))) for code, p in item.top_k),
            time=_iso(item.time), content=self.content)

    def write(self, batch: list[Sampled], progress: Callable[[Outcome], object] | None = None) -> Outcome:
        """Store ``batch``: each record's new image first (a record is never read before its image),
        then the records whose images are stored, as a file each ``file_seconds`` and at the end.
        ``progress``, if given, gets an ``Outcome(final=False)`` for each file but the last as it is
        stored (the server counts them then, not at the end of a long batch); the ``Outcome``
        returned holds the rest."""
        outcome = Outcome()
        records: list[tuple[CaptureRecord, bytes]] = []
        for item in batch:
            try:
                records.append((self.record(item), item.image))
            except CaptureError as exc:  # e.g. a request id over the format's bound
                outcome.failed += 1
                outcome.problems.append(f"capture: product of request {item.request_id:.80} not recorded: {exc}")
        ready: list[CaptureRecord] = []
        stored = 0  # records in stored files
        started = self._clock()
        try:
            for record, image in records:
                if record.image_key is not None and record.image_sha256 not in self._recent:
                    self.pace()
                    self.store.put_bytes(image_key(record.image_sha256), image)
                    self._remember(record.image_sha256)
                ready.append(record)
                if self._clock() - started >= self.file_seconds and len(ready) < len(records) - stored:
                    piece = Outcome(final=False)
                    self._put_files(ready, piece)
                    stored += len(ready)
                    if progress is None:
                        outcome.add(piece)
                    else:
                        progress(piece)
                    ready, started = [], self._clock()
            self._put_files(ready, outcome)
            stored += len(ready)
        except StorageError as exc:
            lost = len(records) - stored
            outcome.failed += lost
            outcome.files_failed += 1
            outcome.problems.append(f"capture: {lost} records not written to {self.store.uri}: {exc}")
        outcome.next_seq = self.seq
        return outcome

    def _put_files(self, records: list[CaptureRecord], outcome: Outcome) -> None:
        """``records`` as one file per day (counted in ``outcome``)."""
        by_day: dict[str, list[CaptureRecord]] = {}
        for record in records:
            by_day.setdefault(record.day, []).append(record)
        for day, day_records in by_day.items():
            self._put_file(day, day_records)
            outcome.files_written += 1
            outcome.written += len(day_records)

    def _put_file(self, day: str, records: list[CaptureRecord]) -> None:
        data = write_capture_file(records)
        self.pace()
        for _ in range(MAX_NAME_TRIES):
            key = records_key(day, self.name, self.seq)
            self.seq += 1
            try:
                self.store.put_bytes(key, data, overwrite=False)
            except KeyExists:
                logger.warning("capture: %s exists already, trying the next name", key)
                continue
            logger.debug("capture: wrote %d records to %s", len(records), key)
            return
        raise StorageError(f"{MAX_NAME_TRIES} capture file names of {self.name} taken in {self.store.uri}")

    def _remember(self, sha: str) -> None:
        self._recent[sha] = None
        if len(self._recent) > RECENT_IMAGES:
            self._recent.popitem(last=False)

    def start(self) -> None:
        """Nothing to start in process (the process sink's ``start`` starts its process)."""

    def drain(self) -> None:
        """Nothing to change in process (the process sink's ``drain`` lifts its CPU budget)."""

    def close(self) -> None:
        """Nothing to release in process (the process sink's ``close`` stops its process)."""

    def __str__(self) -> str:
        return f"{self.store.uri} as {self.name}"

