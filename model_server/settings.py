"""Server settings: every flag declared once, with its default, environment variable and meaning.

``python -m model_server --help`` is built from these fields without importing KServe or
TensorFlow. Flag names follow KServe's (``--http_port``, ``--model_name``...); the KServe flags
this server does not use are not offered, except ``--workers``, accepted and ignored with a
warning (one process per pod keeps batching and ``/metrics`` whole).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME
from rakuten_common.options import HelpFormatter, add_options, from_args, option
from rakuten_common.preprocessing import ImageLimits


@dataclass(frozen=True)
class RequestLimits:
    """What one V2 request may hold (the codec's refusal thresholds)."""

    max_items: int
    max_text_chars: int
    image: ImageLimits


@dataclass(frozen=True)
class Settings:
    # -- the model -----------------------------------------------------------------------------
    model_name: str = option(MODEL_NAME, env="MODEL_NAME", help="model name in the V2 routes")
    model_uri: str = option("/mnt/models", env=("MODEL_URI", "STORAGE_URI"), metavar="URI",
                            help="a version folder, or a prefix of versions (the champion pointer's version, else "
                                 "the newest), local or s3://; or models:/rakuten-classifier@champion (MLflow registry)")
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
    preprocess_workers: int = option(os.cpu_count() or 2, env="PREPROCESS_WORKERS",
                                     shown=f"the CPU count, {os.cpu_count() or 2} here",
                                     help="threads decoding images and cleaning text")
    # -- request limits (refused with a 400 naming the limit) ------------------------------------
    max_request_items: int = option(64, env="MAX_REQUEST_ITEMS", help="max products (N) in one request")
    max_text_chars: int = option(20_000, env="MAX_TEXT_CHARS",
                                 help="max characters of one designation or description")
    max_image_bytes: int = option(ImageLimits.max_bytes, env="MAX_IMAGE_BYTES", help="max size of one image file")
    max_image_pixels: int = option(ImageLimits.max_pixels, env="MAX_IMAGE_PIXELS",
                                   help="max width x height of one image, against decompression bombs")
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
