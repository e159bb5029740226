"""Prometheus metrics of the predictor, exposed beside KServe's stage histograms on ``/metrics``."""
from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "rakuten_requests", "Inference requests answered, by HTTP status code (refusals before the model included)",
    ["model_name", "status"])
PREDICTIONS = Counter(
    "rakuten_predictions", "Products classified, by top-1 predicted prdtypecode",
    ["model_name", "prdtypecode"])
REJECTED = Counter(
    "rakuten_rejected_requests", "Inference requests refused with a 4xx, by reason",
    ["model_name", "reason"])
BATCH_SIZE = Histogram(
    "rakuten_batch_size", "Products per model call after adaptive batching",
    ["model_name"], buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128))
BATCH_WAIT = Histogram(
    "rakuten_batch_wait_seconds", "Time a request waited in the batching queue before its model call",
    ["model_name"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
MODEL_SECONDS = Histogram(
    "rakuten_model_seconds", "Wall time of one batched model call",
    ["model_name"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
IN_FLIGHT = Gauge(
    "rakuten_inflight_requests", "Inference requests being processed", ["model_name"])
QUEUED_ROWS = Gauge(
    "rakuten_queued_rows", "Products admitted and not yet through the model (bounded by --max_queued_rows)",
    ["model_name"])
INFLIGHT_BYTES = Gauge(
    "rakuten_inflight_bytes", "Request-body bytes held by admitted requests (bounded by --max_inflight_bytes)",
    ["model_name"])
#: Why a request was dropped before (or without further) work: refused at admission, its deadline
#: passed while queued, or its client went away.
DROP_REASONS = ("overloaded", "deadline", "client_disconnected")
DROPPED = Counter(
    "rakuten_dropped_requests", "Inference requests dropped without (further) work, by reason: "
    "overloaded (503 at admission), deadline (504), client_disconnected", ["model_name", "reason"])
WASTED_ROWS = Counter(
    "rakuten_wasted_rows", "Products preprocessed or run through the model for a request whose client had "
    "already left or whose deadline had passed when that step ended (work that was in progress; queued "
    "work is dropped)", ["model_name", "stage"])
MODEL_INFO = Gauge(
    "rakuten_model_info", "Model version being served (value 1)", ["model_name", "version"])
LOAD_SECONDS = Gauge(
    "rakuten_model_load_seconds", "Seconds spent in each phase of the last model load "
    "(fetch: download and verify, load: deserialise, warmup: trace and first calls)",
    ["model_name", "phase"])
#: Inference capture (model_server.capture): what became of each sampled product's record.
CAPTURE_RECORDS = Counter(
    "rakuten_capture_records", "Sampled products' capture records, by outcome: written (in a stored file), "
    "dropped (the capture queue was full), failed (the store refused or was unreachable)",
    ["model_name", "outcome"])
CAPTURE_FILES = Counter(
    "rakuten_capture_files", "Capture record files, by outcome: written, failed", ["model_name", "outcome"])
CAPTURE_QUEUE_BYTES = Gauge(
    "rakuten_capture_queue_bytes", "Bytes of capture records queued or being written (bounded by "
    "--capture_queue_bytes)", ["model_name"])
CAPTURE_BUDGET_WAIT = Counter(
    "rakuten_capture_writer_budget_wait_seconds", "Seconds the capture writer process waited to keep to "
    "--capture_writer_cpu (rising with dropped records: the budget, not the server's load, drops them)",
    ["model_name"])


class LoadTimer:
    """Times the phases of a model load into ``LOAD_SECONDS``."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started
            LOAD_SECONDS.labels(model_name=self.model_name, phase=name).set(self.seconds[name])

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.seconds.items())
