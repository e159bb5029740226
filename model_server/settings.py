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
from rakuten_common.options import HelpFormatter, add_options, from_args, option
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


@dataclass(frozen=True)
class DriftSettings:
    """The drift window of ``model_server.drift``."""

    window_products: int   # 0: drift monitoring off
    window_seconds: float
    min_products: int
    low_confidence: float


def drift_window(text: str) -> int:
    """A drift window size (argparse type): 0 to ``MAX_DRIFT_WINDOW`` products."""
    value = int(text)
    if not 0 <= value <= MAX_DRIFT_WINDOW:
        raise ValueError(f"{value} is not from 0 to {MAX_DRIFT_WINDOW}")
    return value


@dataclass(frozen=True)
class Settings:
    # -- the model -----------------------------------------------------------------------------
    model_name: str = option(MODEL_NAME, env="MODEL_NAME", help="model name in the V2 routes")
    model_uri: str = option("/mnt/models", env=("MODEL_URI", "STORAGE_URI"), metavar="URI",
                            help="one version folder, a prefix of versions, or s3://bucket/prefix")
    model_cache_dir: Path = option(Path("/tmp/rakuten-model-cache"), env="MODEL_CACHE_DIR",
                                   help="where s3:// models are downloaded")
    # -- listening -------------------------------------------------------------------------------
    http_port: int = option(8080, env="HTTP_PORT", help="REST port (V2, health, /metrics)")
    grpc_port: int = option(8081, env="GRPC_PORT", help="gRPC port (V2)")
    enable_grpc: bool = option(True, env="ENABLE_GRPC", help="serve V2 over gRPC too")
    # -- batching and threads --------------------------------------------------------------------
    max_batch_size: int = option(32, env="MAX_BATCH_SIZE",
                                 help="max products per model call; 1 disables adaptive batching")
    max_batch_time_ms: float = option(5.0, env="MAX_BATCH_TIME_MS",
                                      help="max wait for more requests, only while some are on their way")
    preprocess_workers: int = option(default_factory=available_cpus, env="PREPROCESS_WORKERS", shown=_CPU_LIMIT,
                                     help="threads decoding images and cleaning text")
    tf_intra_op_threads: int = option(default_factory=available_cpus, env="TF_INTRA_OP_THREADS", shown=_CPU_LIMIT,
                                      help="threads working inside one model op (TF intra-op pool)")
    tf_inter_op_threads: int = option(default_factory=available_cpus, env="TF_INTER_OP_THREADS", shown=_CPU_LIMIT,
                                      help="model ops run at once (TF inter-op pool)")
    # -- request limits (refused with a 400 naming the limit) ------------------------------------
    max_request_items: int = option(64, env="MAX_REQUEST_ITEMS", help="max products (N) in one request")
    max_text_chars: int = option(20_000, env="MAX_TEXT_CHARS",
                                 help="max characters of one designation or description")
    max_image_bytes: int = option(ImageLimits.max_bytes, env="MAX_IMAGE_BYTES", help="max size of one image file")
    max_image_pixels: int = option(ImageLimits.max_pixels, env="MAX_IMAGE_PIXELS",
                                   help="max width x height of one image, against decompression bombs")
    # -- drift monitoring (model_server.drift) ----------------------------------------------------
    drift_window_products: int = option(5000, env="DRIFT_WINDOW_PRODUCTS", type=drift_window,
                                        metavar="N", help="products in the rolling drift window; 0 turns drift "
                                                          f"monitoring off (at most {MAX_DRIFT_WINDOW:,})")
    drift_window_seconds: float = option(3600.0, env="DRIFT_WINDOW_SECONDS",
                                         help="products older than this leave the drift window")
    drift_min_products: int = option(200, env="DRIFT_MIN_PRODUCTS",
                                     help="products the window needs before the drift gauges get a value (NaN before)")
    drift_low_confidence: float = option(0.5, env="DRIFT_LOW_CONFIDENCE",
                                         help="top-1 probability below which a prediction counts as low-confidence")
    # -- logs ------------------------------------------------------------------------------------
    log_level: str = option("INFO", env="LOG_LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                            type=str.upper, help="log level")
    access_log: bool = option(True, env="ACCESS_LOG", help="one log line per HTTP request")
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
    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_request_items, self.max_text_chars,
                             ImageLimits(self.max_image_bytes, self.max_image_pixels))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_server", formatter_class=HelpFormatter,
        description="KServe V2 predictor of the Rakuten product classifier.\n"
                    "Every option can also be set by the environment variable named in its help.")
    add_options(parser, Settings, style="snake")
    return parser


def parse_settings(argv: list[str] | None = None) -> Settings:
    return from_args(Settings, build_parser().parse_args(argv))
