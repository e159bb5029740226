"""Inference capture: a sample of the served products, recorded for review and retraining.

With ``--capture_uri`` (``s3://bucket/prefix`` or a local folder), each product of an answered
request is sampled with probability ``--capture_sample_rate``. The request path only appends
the sampled products' raw pieces (text, image bytes, top-k) to a queue bounded in bytes
(``--capture_queue_bytes``); when it is full they are dropped and counted, never waited for.
A background thread turns them into ``rakuten_common.captures`` records (hashing text and image
there, not on the request path), stores each image once (``images/<sha256>.jpg``, skipped when
written recently) and then the records as one immutable file
(``captures/date=YYYY-MM-DD/<pod>-<seq>.jsonl.gz``, a conditional write that never replaces a
file). A file is written when ``--capture_file_records`` records wait, when they hold
``FILE_BYTES``, when the oldest has waited ``--capture_flush_seconds``, and at shutdown (after
the SIGTERM drain, every answered request's sampled products are written before the process
exits). ``--capture_content hashes`` keeps text and images out: records hold their SHA-256 only.

An unreachable store costs the server nothing but the records: a batch that cannot be written
is counted (``rakuten_capture_records_total{outcome="failed"}``) with a rate-limited WARNING,
and the S3 client has short timeouts and two attempts, so the writer never hangs for minutes.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from model_server import metrics
from model_server.settings import CaptureSettings
from rakuten_common.captures import (
    CONTENT_HASHES,
    CaptureError,
    CaptureRecord,
    image_key,
    image_sha256,
    pod_name,
    records_key,
    text_sha256,
    write_capture_file,
)
from rakuten_common.logs import RateLimitedLog
from rakuten_common.storage import KeyExists, S3Store, StorageError, Store, open_store, s3_client, split_s3_uri

logger = logging.getLogger("rakuten.capture")

#: A file is written when its records' payload reaches this many bytes.
FILE_BYTES = 8 * 1024 * 1024
#: Bytes counted for a record beside its text and image (ids, hashes, top-k, JSON).
RECORD_OVERHEAD = 400
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


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def open_capture_store(uri: str) -> Store:
    """The store of ``--capture_uri``; for S3 with the writer's short timeouts and two attempts."""
    if uri.startswith("s3://"):
        bucket, prefix = split_s3_uri(uri)
        store = S3Store(bucket, prefix, client=s3_client(max_pool_connections=2, connect_timeout=CONNECT_TIMEOUT,
                                                         read_timeout=READ_TIMEOUT))
        store.attempts, store.backoff = ATTEMPTS, 0.2
        return store
    return open_store(uri)


class CaptureWriter:
    """The bounded queue and the thread writing it (see the module docstring)."""

    def __init__(self, store: Store, settings: CaptureSettings, model_name: str, name: str | None = None,
                 clock=time.monotonic):
        self.store, self.settings, self._clock = store, settings, clock
        # The pod name and this process's start: a restarted container never reuses a file name.
        self.name = name or f"{pod_name()}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        self._seq = 0
        self._pending: list[Sampled] = []
        self._pending_bytes = 0   # of _pending
        self._held_bytes = 0      # of _pending and the batch being written: what the bound limits
        self._oldest = 0.0
        self._closing = False
        self._cond = threading.Condition()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._warn = RateLimitedLog(logger, per_second=1)
        label = {"model_name": model_name}
        self._written, self._dropped, self._failed = (metrics.CAPTURE_RECORDS.labels(outcome=outcome, **label)
                                                      for outcome in ("written", "dropped", "failed"))
        self._files = {outcome: metrics.CAPTURE_FILES.labels(outcome=outcome, **label)
                       for outcome in ("written", "failed")}
        self._queue_gauge = metrics.CAPTURE_QUEUE_BYTES.labels(**label)

    # -- the request path ------------------------------------------------------------------------
    def offer(self, items: list[Sampled]) -> None:
        """Queue ``items``, or drop (and count) those the byte bound has no room for. Never waits
        for the writer: the lock only guards list appends."""
        taken = dropped = 0
        was_empty = False
        with self._cond:
            if self._closing:
                dropped = len(items)
            else:
                for item in items:
                    if self._held_bytes + item.size > self.settings.queue_bytes:
                        dropped += 1
                        continue
                    if not self._pending:
                        self._oldest = self._clock()
                        was_empty = True
                    self._pending.append(item)
                    self._pending_bytes += item.size
                    self._held_bytes += item.size
                    taken += 1
                # Wake the writer for the first product (it then waits for the age flush) and when a file is full.
                if taken and (was_empty or len(self._pending) >= self.settings.file_records
                              or self._pending_bytes >= FILE_BYTES):
                    self._cond.notify()
        if dropped:
            self._dropped.inc(dropped)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        logger.info("Capturing %g of the products to %s (%s content; queue %d bytes, files of up to %d records, "
                    "flushed every %g s) as %s", self.settings.sample_rate, self.store.uri, self.settings.content,
                    self.settings.queue_bytes, self.settings.file_records, self.settings.flush_seconds, self.name)

    def close(self, timeout: float) -> bool:
        """Write what is queued, then stop; ``False`` if that took longer than ``timeout`` seconds."""
        with self._cond:
            self._closing = True
            waiting = len(self._pending)
            self._cond.notify()
        if self._thread.is_alive():
            logger.info("Writing the %d captured records still queued", waiting)
            self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                left = self._held_bytes
            logger.warning("capture: %d bytes of records still not written %.0f s into the shutdown", left, timeout)
            return False
        return True

    # -- the writer thread -----------------------------------------------------------------------
    def _take(self) -> list[Sampled] | None:
        """The next batch to write (waiting for one), ``None`` when closed and empty."""
        with self._cond:
            while True:
                if self._pending:
                    due = self._oldest + self.settings.flush_seconds - self._clock()
                    if (self._closing or due <= 0 or len(self._pending) >= self.settings.file_records
                            or self._pending_bytes >= FILE_BYTES):
                        break
                    self._cond.wait(due)
                elif self._closing:
                    return None
                else:
                    self._cond.wait()
            batch: list[Sampled] = []
            size = 0
            for item in self._pending:
                if batch and (len(batch) >= self.settings.file_records or size >= FILE_BYTES):
                    break
                batch.append(item)
                size += item.size
            self._pending = self._pending[len(batch):]
            self._pending_bytes -= size  # what remains is as old as the batch: due at once
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._write(batch)
            except Exception:  # never let the thread die: count and go on
                logger.exception("capture: writing %d records failed", len(batch))
                self._failed.inc(len(batch))
            finally:
                with self._cond:
                    self._held_bytes -= sum(item.size for item in batch)
                    self._queue_gauge.set(self._held_bytes)

    def _record(self, item: Sampled) -> CaptureRecord:
        hashes = self.settings.content == CONTENT_HASHES
        return CaptureRecord(
            request_id=item.request_id, productid=item.productid,
            designation=None if hashes else item.designation, description=None if hashes else item.description,
            text_sha256=text_sha256(item.designation, item.description), image_sha256=image_sha256(item.image),
            model_version=item.model_version, top_k=tuple((code, min(1.0, max(0.0, p))) for code, p in item.top_k),
            time=_iso(item.time), content=self.settings.content)

    def _write(self, batch: list[Sampled]) -> None:
        self._queue_gauge.set(self._held_bytes)
        records, images = [], {}
        for item in batch:
            try:
                record = self._record(item)
            except CaptureError as exc:  # e.g. a request id over the format's bound
                self._warn.log(logging.WARNING, "capture: product of request %.80r not recorded: %s",
                               item.request_id, exc)
                self._failed.inc()
                continue
            records.append(record)
            if record.image_key is not None and record.image_sha256 not in self._recent:
                images[record.image_sha256] = item.image
        if not records:
            return
        try:
            for sha, data in images.items():  # images first: a record is never read before its image
                self.store.put_bytes(image_key(sha), data)
                self._remember(sha)
            by_day: dict[str, list[CaptureRecord]] = {}
            for record in records:
                by_day.setdefault(record.day, []).append(record)
            for day, day_records in by_day.items():
                self._put_file(day, day_records)
        except StorageError as exc:
            self._failed.inc(len(records))
            self._files["failed"].inc()
            self._warn.log(logging.WARNING, "capture: %d records not written to %s: %s", len(records),
                           self.store.uri, exc)
            return
        self._written.inc(len(records))

    def _put_file(self, day: str, records: list[CaptureRecord]) -> None:
        data = write_capture_file(records)
        for _ in range(MAX_NAME_TRIES):
            key = records_key(day, self.name, self._seq)
            self._seq += 1
            try:
                self.store.put_bytes(key, data, overwrite=False)
            except KeyExists:
                logger.warning("capture: %s exists already, trying the next name", key)
                continue
            self._files["written"].inc()
            logger.debug("capture: wrote %d records to %s", len(records), key)
            return
        raise StorageError(f"{MAX_NAME_TRIES} capture file names of {self.name} taken in {self.store.uri}")

    def _remember(self, sha: str) -> None:
        self._recent[sha] = None
        if len(self._recent) > RECENT_IMAGES:
            self._recent.popitem(last=False)


class Capture:
    """The request path's side: sample the products of an answered request and queue them."""

    def __init__(self, writer: CaptureWriter, sample_rate: float):
        self.writer, self.sample_rate = writer, sample_rate
        self._random = random.random

    def observe(self, request_id: str, products, codes, probabilities, model_version: str) -> None:
        """``products``: the request's ``codec.Products``; ``codes``/``probabilities``: its top-k arrays."""
        rate = self.sample_rate
        picked = [i for i in range(len(codes)) if rate >= 1.0 or self._random() < rate]
        if not picked:
            return
        now = time.time()
        ids = products.productids
        items = []
        for i in picked:
            designation, description, image = products.designations[i], products.descriptions[i], products.images[i]
            items.append(Sampled(request_id, None if ids is None else ids[i], designation, description, image,
                                 list(zip(codes[i].tolist(), probabilities[i].tolist())), model_version, now,
                                 len(designation) + len(description) + len(image) + RECORD_OVERHEAD))
        self.writer.offer(items)

    def close(self, timeout: float) -> bool:
        return self.writer.close(timeout)


def start_capture(settings: CaptureSettings, model_name: str) -> Capture | None:
    """A started ``Capture`` for ``settings``, ``None`` when ``settings.uri`` is empty (capture off)."""
    if not settings.uri:
        return None
    writer = CaptureWriter(open_capture_store(settings.uri), settings, model_name)
    writer.start()
    return Capture(writer, settings.sample_rate)
