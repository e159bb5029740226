"""Inference capture: a sample of the served products, recorded for review and retraining.

With ``--capture_uri`` (``s3://bucket/prefix`` or a local folder), each product of an answered
request is sampled with probability ``--capture_sample_rate``. The request path only appends
the sampled products' raw pieces (text, image bytes, top-k) to a queue bounded in bytes
(``--capture_queue_bytes``); when it is full they are dropped and counted, never waited for.
A background thread takes them in batches and hands each batch to the capture writer process
(``model_server.capture_process``, on a small CPU budget), which turns it into
``rakuten_common.captures`` records (hashing text and image there, not on the request path),
stores each image once (``images/<sha256>.jpg``, skipped when written recently) and then the
records as one immutable file (``captures/date=YYYY-MM-DD/<pod>-<seq>.jsonl.gz``, a conditional
write that never replaces a file: ``model_server.capture_files``). A file is written when
``--capture_file_records`` records wait, when they hold ``FILE_BYTES``, when the oldest has
waited ``--capture_flush_seconds`` (and a batch whose writing takes longer is stored as a file
each such period), and at shutdown (after the SIGTERM drain, every answered request's sampled
products are written before the process exits). The writer process never uses more than
``--capture_writer_cpu`` cores on average until the shutdown drain: what it cannot write fills
the queue, and is dropped and counted (measured costs: docs/capture.md).
``--capture_content hashes`` keeps text and images out: records hold their SHA-256 only.

An unreachable store costs the server nothing but the records: a batch that cannot be written
is counted (``rakuten_capture_records_total{outcome="failed"}``) with a rate-limited WARNING,
and the S3 client has short timeouts and two attempts, so the writer never hangs for minutes.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime

from model_server import metrics
from model_server.capture_files import CaptureFiles, Outcome, Sampled, open_capture_store
from model_server.capture_process import WriterProcess
from model_server.settings import CaptureSettings
from rakuten_common.captures import pod_name
from rakuten_common.logs import RateLimitedLog

logger = logging.getLogger("rakuten.capture")

__all__ = ["Capture", "CaptureFiles", "CaptureWriter", "Sampled", "WriterProcess", "open_capture_store",
           "start_capture"]

#: A file is written when its records' payload reaches this many bytes.
FILE_BYTES = 8 * 1024 * 1024
#: Bytes counted for a record beside its text and image (ids, hashes, top-k, JSON).
RECORD_OVERHEAD = 400


class CaptureWriter:
    """The bounded queue and the thread handing its batches to ``sink`` (a ``WriterProcess``, or a
    ``CaptureFiles`` writing in this process; see the module docstring)."""

    def __init__(self, sink: WriterProcess | CaptureFiles, settings: CaptureSettings, model_name: str,
                 clock=time.monotonic):
        self.sink, self.settings, self._clock = sink, settings, clock
        self._pending: list[Sampled] = []
        self._pending_bytes = 0   # of _pending
        self._held_bytes = 0      # of _pending and the batch being written: what the bound limits
        self._oldest = 0.0
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._warn = RateLimitedLog(logger, per_second=1)
        label = {"model_name": model_name}
        self._written, self._dropped, self._failed = (metrics.CAPTURE_RECORDS.labels(outcome=outcome, **label)
                                                      for outcome in ("written", "dropped", "failed"))
        self._files = {outcome: metrics.CAPTURE_FILES.labels(outcome=outcome, **label)
                       for outcome in ("written", "failed")}
        self._queue_gauge = metrics.CAPTURE_QUEUE_BYTES.labels(**label)
        self._budget_wait = metrics.CAPTURE_BUDGET_WAIT.labels(**label)

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
        self.sink.start()
        self._thread.start()
        logger.info("Capturing %g of the products to %s (%s content; queue %d bytes, files of up to %d records, "
                    "flushed every %g s)", self.settings.sample_rate, self.sink, self.settings.content,
                    self.settings.queue_bytes, self.settings.file_records, self.settings.flush_seconds)

    def close(self, timeout: float) -> bool:
        """Write what is queued, then stop; ``False`` if that took longer than ``timeout`` seconds."""
        self.sink.drain()
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
        self.sink.close()
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

    def _write(self, batch: list[Sampled]) -> None:
        self._queue_gauge.set(self._held_bytes)
        self._count(self.sink.write(batch, self._count))

    def _count(self, outcome: Outcome) -> None:
        """Count and log what the sink wrote: a whole batch, or a file of one (``progress``)."""
        for problem in outcome.problems:
            self._warn.log(logging.WARNING, "%s", problem)
        self._written.inc(outcome.written)
        self._failed.inc(outcome.failed)
        self._files["written"].inc(outcome.files_written)
        self._files["failed"].inc(outcome.files_failed)
        self._budget_wait.inc(outcome.budget_wait_seconds)


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
    # The pod name and this process's start: a restarted container never reuses a file name.
    name = f"{pod_name()}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    writer = CaptureWriter(WriterProcess(settings.uri, settings.content, name, settings.writer_cpu,
                                         file_seconds=settings.flush_seconds), settings, model_name)
    writer.start()
    return Capture(writer, settings.sample_rate)
