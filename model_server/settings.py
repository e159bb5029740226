"""Server settings: every flag declared once, with its default, environment variable and meaning.

``python -m model_server --help`` is built from these fields without importing KServe or
TensorFlow. Flag names follow KServe's (``--http_port``, ``--model_name``...); the KServe flags
this server does not use are not offered, except ``--workers``, accepted and ignored with a
warning (one process per pod keeps batching and ``/metrics`` whole).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME
from rakuten_common.cpu import available_cpus
from rakuten_common.options import (
    AT_LEAST_ONE,
    COUNT,
    NOT_NEGATIVE,
    PORT,
    POSITIVE,
    SHARE,
    HelpFormatter,
    add_options,
    bounded,
    from_args,
    option,
)
from rakuten_common.preprocessing import ImageLimits

#: Thread pools default to the container's CPU limit (rakuten_common.cpu), not the node's cores;
#: read when the parser is built, so CPU_LIMIT set by then counts.
_CPU_LIMIT = "the CPU limit (CPU_LIMIT, cgroup quota or usable CPUs)"

#: Largest drift window accepted (about 200 bytes per product).
MAX_DRIFT_WINDOW = 1_000_000


@dataclass(frozen=True)
class RequestLimits:
    """What one V2 request may hold (the codec's refusal thresholds)."""

    max_items: int
    max_text_chars: int
    image: ImageLimits
    max_request_pixels: int
    max_id_chars: int


@dataclass(frozen=True)
class DriftSettings:
    """The drift window of ``model_server.drift``."""

    window_products: int   # 0: drift monitoring off
    window_seconds: float
    min_products: int
    low_confidence: float


@dataclass(frozen=True)
class CaptureSettings:
    """Inference capture (``model_server.capture``); ``uri`` empty: off."""

    uri: str
    sample_rate: float
    content: str           # "full" or "hashes"
    queue_bytes: int
    file_records: int
    flush_seconds: float
    writer_cpu: float = 0.01  # cores the writer process may use on average


#: The capture writer's CPU budget (option type): from 0.01 cores (a budget wait stays far below
#: the writer process's 2-minute no-CPU backstop).
WRITER_CORES = bounded(float, minimum=0.01)

#: A drift window size (option type): 0 to ``MAX_DRIFT_WINDOW`` products.
drift_window = bounded(int, 0, MAX_DRIFT_WINDOW)


@dataclass(frozen=True)
class Settings:
    # -- the model -----------------------------------------------------------------------------
    model_name: str = option(MODEL_NAME, env="MODEL_NAME", help="model name in the V2 routes")
    model_uri: str = option("/mnt/models", env=("MODEL_URI", "STORAGE_URI"), metavar="URI",
                            help="a version folder, or a prefix of versions (the champion pointer's version, else "
                                 "the newest), local or s3://; or models:/rakuten-classifier@champion (MLflow registry)")
    model_cache_dir: Path = option(Path("/tmp/rakuten-model-cache"), env="MODEL_CACHE_DIR",
                                   help="where s3:// models are downloaded")
    model_fallback: str = option("previous", env="MODEL_FALLBACK", choices=("previous", "none"),
                                 help="when the newest version of a prefix is unusable (corrupt manifest, "
                                      "checksum mismatch): try the previous one, or fail")
    # -- listening -------------------------------------------------------------------------------
    http_port: int = option(8080, env="HTTP_PORT", type=PORT, help="REST port (V2, health, /metrics)")
    grpc_port: int = option(8081, env="GRPC_PORT", type=PORT, help="gRPC port (V2)")
    enable_grpc: bool = option(True, env="ENABLE_GRPC", help="serve V2 over gRPC too")
    # -- batching and threads --------------------------------------------------------------------
    max_batch_size: int = option(32, env="MAX_BATCH_SIZE", type=AT_LEAST_ONE,
                                 help="max products per model call; 1 disables adaptive batching")
    max_batch_time_ms: float = option(5.0, env="MAX_BATCH_TIME_MS", type=NOT_NEGATIVE,
                                      help="max wait for more requests, only while some are on their way")
    preprocess_workers: int = option(default_factory=available_cpus, env="PREPROCESS_WORKERS", type=AT_LEAST_ONE,
                                     shown=_CPU_LIMIT, help="threads decoding images and cleaning text")
    tf_intra_op_threads: int = option(default_factory=available_cpus, env="TF_INTRA_OP_THREADS", shown=_CPU_LIMIT,
                                      help="threads working inside one model op (TF intra-op pool)")
    tf_inter_op_threads: int = option(default_factory=available_cpus, env="TF_INTER_OP_THREADS", shown=_CPU_LIMIT,
                                      help="model ops run at once (TF inter-op pool)")
    # -- request limits (refused with a 400 naming the limit) ------------------------------------
    max_request_items: int = option(64, env="MAX_REQUEST_ITEMS", type=AT_LEAST_ONE,
                                    help="max products (N) in one request")
    max_text_chars: int = option(20_000, env="MAX_TEXT_CHARS", type=AT_LEAST_ONE,
                                 help="max characters of one designation or description")
    max_image_bytes: int = option(ImageLimits.max_bytes, env="MAX_IMAGE_BYTES", type=AT_LEAST_ONE,
                                  help="max size of one image file")
    max_image_pixels: int = option(ImageLimits.max_pixels, env="MAX_IMAGE_PIXELS", type=AT_LEAST_ONE,
                                   help="max width x height of one image, against decompression bombs")
    max_request_pixels: int = option(50_000_000, env="MAX_REQUEST_PIXELS", type=AT_LEAST_ONE,
                                     help="max pixels decoded for one request, all its images together "
                                          "(JPEGs count at their reduced decoding scale, 16-bit images twice)")
    max_id_chars: int = option(256, env="MAX_ID_CHARS", type=AT_LEAST_ONE, help="max characters of a request id")
    # -- admission control (beyond these, a fast 503 with Retry-After) ---------------------------
    # One model batch (--max_batch_size): at saturation a product then waits about as long as at
    # capacity; 64 doubled the admitted p99 at 4x capacity and served no more (docs/performance.md).
    max_queued_rows: int = option(32, env="MAX_QUEUED_ROWS", type=AT_LEAST_ONE,
                                  help="max products admitted and not yet through the model (parsing, "
                                       "preprocessing, batching queue)")
    max_inflight_bytes: int = option(128 * 1024 * 1024, env="MAX_INFLIGHT_BYTES", type=AT_LEAST_ONE,
                                     help="max request-body bytes held by admitted requests together")
    request_timeout_seconds: float = option(30.0, env="REQUEST_TIMEOUT_SECONDS", type=POSITIVE,
                                            help="deadline of a request; a client's `timeout` header (seconds) "
                                                 "or gRPC deadline may shorten it. Work still queued at the "
                                                 "deadline is dropped and the answer is a 504")
    # -- HTTP layer ------------------------------------------------------------------------------
    max_body_bytes: int = option(32 * 1024 * 1024, env="MAX_BODY_BYTES", type=AT_LEAST_ONE,
                                 help="max request body (HTTP) or message (gRPC), refused with 413 before it is read")
    max_header_bytes: int = option(16 * 1024, env="MAX_HEADER_BYTES", type=AT_LEAST_ONE,
                                   help="max size of a request's URL plus headers (431 beyond)")
    max_headers: int = option(100, env="MAX_HEADERS", type=AT_LEAST_ONE,
                              help="max number of request headers (431 beyond)")
    header_timeout_seconds: float = option(10.0, env="HEADER_TIMEOUT_SECONDS", type=POSITIVE,
                                           help="time a client has to send a request's headers, then the "
                                                "connection is closed (against slow-header attacks)")
    body_timeout_seconds: float = option(30.0, env="BODY_TIMEOUT_SECONDS", type=POSITIVE,
                                         help="time a client has to send a request's body (408 beyond)")
    timeout_keep_alive: int = option(65, env="TIMEOUT_KEEP_ALIVE", type=AT_LEAST_ONE,
                                     help="seconds an idle keep-alive connection stays open (longer than "
                                          "the proxy's idle timeout)")
    max_connections: int = option(2048, env="MAX_CONNECTIONS", type=AT_LEAST_ONE,
                                  help="max open HTTP connections; beyond, the longest-idle connection "
                                       "(or one still sending headers) is closed to make room")
    # -- authentication and rate limiting (off unless keys are given) -----------------------------
    api_keys_file: Path | None = option(None, env="API_KEYS_FILE", type=Path, metavar="PATH",
                                        help="file of API keys, one per line (e.g. a mounted Secret; "
                                             "re-read when it changes): inference and metadata, REST and "
                                             "gRPC, then need `Authorization: Bearer <key>` or `X-API-Key`; "
                                             "health probes and /metrics stay open (docs/hardening.md)")
    api_keys: str = option("", env="API_KEYS", metavar="KEYS",
                           help="comma-separated API keys (prefer API_KEYS_FILE: flags show in `ps`)")
    rate_limit_rps: float = option(0.0, env="RATE_LIMIT_RPS", type=NOT_NEGATIVE,
                                   help="requests per second allowed per API key, 429 with Retry-After "
                                        "beyond (0: no limit; needs API keys)")
    rate_limit_burst: int = option(20, env="RATE_LIMIT_BURST", type=AT_LEAST_ONE,
                                   help="requests a key may send at once above the rate")
    metrics_port: int = option(0, env="METRICS_PORT", type=bounded(int, 0, 65535),
                               help="serve /metrics on this port only, from its own thread (0: on the HTTP "
                                    "port, without authentication)")
    enable_repository_api: bool = option(False, env="ENABLE_REPOSITORY_API",
                                         help="serve the V2 repository API (load/unload, REST and gRPC); "
                                              "off: anyone could unload the model")
    # -- termination -----------------------------------------------------------------------------
    drain_seconds: float = option(5.0, env="DRAIN_SECONDS", type=NOT_NEGATIVE,
                                  help="after SIGTERM: readiness fails at once, requests are still served "
                                       "for this long, then the server stops")
    shutdown_timeout_seconds: float = option(10.0, env="SHUTDOWN_TIMEOUT_SECONDS", type=NOT_NEGATIVE,
                                             help="after the drain, how long requests in progress may take")
    # -- drift monitoring (model_server.drift) ----------------------------------------------------
    drift_window_products: int = option(5000, env="DRIFT_WINDOW_PRODUCTS", type=drift_window,
                                        metavar="N", help="products in the rolling drift window; 0 turns drift "
                                                          f"monitoring off (at most {MAX_DRIFT_WINDOW:,})")
    drift_window_seconds: float = option(3600.0, env="DRIFT_WINDOW_SECONDS", type=POSITIVE,
                                         help="products older than this leave the drift window")
    drift_min_products: int = option(200, env="DRIFT_MIN_PRODUCTS", type=AT_LEAST_ONE,
                                     help="products the window needs before the drift gauges get a value (NaN before)")
    drift_low_confidence: float = option(0.5, env="DRIFT_LOW_CONFIDENCE", type=SHARE,
                                         help="top-1 probability below which a prediction counts as low-confidence")
    # -- inference capture (model_server.capture, docs/capture.md) --------------------------------
    capture_uri: str = option("", env="CAPTURE_URI", metavar="URI",
                              help="record a sample of the served products (text, image, top-k) under this "
                                   "s3://bucket/prefix or local folder (empty: capture off)")
    capture_sample_rate: float = option(0.1, env="CAPTURE_SAMPLE_RATE", type=SHARE,
                                        help="share of the products captured, 0 to 1")
    capture_content: str = option("full", env="CAPTURE_CONTENT", choices=("full", "hashes"),
                                  help="full: records hold the text and the image is stored; hashes: only the "
                                       "SHA-256 of text and image (for shops that may not store them)")
    capture_queue_bytes: int = option(2 * 1024 * 1024, env="CAPTURE_QUEUE_BYTES", type=AT_LEAST_ONE,
                                      help="max bytes of sampled products waiting to be written (about what the "
                                           "writer's CPU budget writes in a few seconds: held request bytes cost "
                                           "serving CPU); beyond, they are dropped and counted, never waited for")
    capture_file_records: int = option(1000, env="CAPTURE_FILE_RECORDS", type=AT_LEAST_ONE,
                                       help="records per capture file at most (a file is written when this many wait)")
    capture_flush_seconds: float = option(30.0, env="CAPTURE_FLUSH_SECONDS", type=POSITIVE,
                                          help="longest a sampled product waits before its file is written")
    capture_writer_cpu: float = option(0.01, env="CAPTURE_WRITER_CPU", type=WRITER_CORES, metavar="CORES",
                                       help="CPU the capture writer process may use on average, in cores (0.01 = "
                                            "10m, counted in the pod's CPU limit; 1 or more: no bound): capture "
                                            "costs serving this much at most; beyond, the writer waits, the queue "
                                            "fills and records are dropped and counted. Not bound while the "
                                            "shutdown drain writes what is queued")
    # -- logs ------------------------------------------------------------------------------------
    log_level: str = option("INFO", env="LOG_LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                            type=str.upper, help="log level")
    access_log: bool = option(True, env="ACCESS_LOG",
                              help="one log line per HTTP request or gRPC call (503 refusals: see the next)")
    refusal_log_lines_per_second: int = option(10, env="REFUSAL_LOG_LINES_PER_SECOND", type=COUNT,
                                               help="access lines of 503 refusals written a second at most, the "
                                                    "next one saying how many were left out (under overload each "
                                                    "line costs as much as the refusal); 0: every one")
    enable_latency_logging: bool = option(False, env="ENABLE_LATENCY_LOGGING",
                                          help="KServe's per-request timing lines (three more lines a request)")
    workers: int = option(1, help="ignored: one process per pod; scale with replicas")

    @property
    def max_batch_time(self) -> float:
        """``max_batch_time_ms`` in seconds."""
        return self.max_batch_time_ms / 1000

    @property
    def drift(self) -> DriftSettings:
        return DriftSettings(self.drift_window_products, self.drift_window_seconds, self.drift_min_products,
                             self.drift_low_confidence)

    @property
    def capture(self) -> CaptureSettings:
        return CaptureSettings(self.capture_uri, self.capture_sample_rate, self.capture_content,
                               self.capture_queue_bytes, self.capture_file_records, self.capture_flush_seconds,
                               self.capture_writer_cpu)

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_request_items, self.max_text_chars,
                             ImageLimits(self.max_image_bytes, self.max_image_pixels),
                             self.max_request_pixels, self.max_id_chars)

    @property
    def api_key_list(self) -> list[str]:
        """Keys given inline (``--api_keys``); the file's are read by ``model_server.auth``."""
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_server", formatter_class=HelpFormatter,
        description="KServe V2 predictor of the Rakuten product classifier.\n"
                    "Every option can also be set by the environment variable named in its help.")
    add_options(parser, Settings, style="snake")
    return parser


def parse_settings(argv: list[str] | None = None) -> Settings:
    return from_args(Settings, build_parser().parse_args(argv))
