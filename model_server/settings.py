"""Server settings: KServe's own flags plus ours, each with an environment-variable default."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import kserve

from model_server import MODEL_NAME
from model_server.codec import RequestLimits
from rakuten_common.env import env_default


@dataclass(frozen=True)
class Settings:
    model_name: str = MODEL_NAME
    model_uri: str = "/mnt/models"
    cache_dir: Path = Path("/tmp/rakuten-model-cache")
    max_batch_size: int = 32
    max_batch_time: float = 0.005
    preprocess_workers: int = os.cpu_count() or 2
    max_image_pixels: int = 40_000_000
    limits: RequestLimits = RequestLimits()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_server", parents=[kserve.model_server.parser],
                                     description="KServe V2 predictor for the Rakuten product classifier.")
    # One latency log line per request is noise at hundreds of requests/s; /metrics has the figures.
    parser.set_defaults(model_name=env_default("MODEL_NAME", MODEL_NAME), enable_latency_logging=False)
    a = parser.add_argument
    a("--model_uri", default=env_default("MODEL_URI", env_default("STORAGE_URI", "/mnt/models")),
      help="model folder, prefix of versions, or s3://bucket/prefix [MODEL_URI]")
    a("--model_cache_dir", type=Path, default=Path(env_default("MODEL_CACHE_DIR", "/tmp/rakuten-model-cache")),
      help="where s3:// models are downloaded [MODEL_CACHE_DIR]")
    a("--max_batch_size", type=int, default=env_default("MAX_BATCH_SIZE", 32),
      help="max products per model call; 1 disables adaptive batching [MAX_BATCH_SIZE]")
    a("--max_batch_time_ms", type=float, default=env_default("MAX_BATCH_TIME_MS", 5.0),
      help="max wait for more requests when some are on their way [MAX_BATCH_TIME_MS]")
    a("--preprocess_workers", type=int, default=env_default("PREPROCESS_WORKERS", os.cpu_count() or 2),
      help="threads decoding images and cleaning text [PREPROCESS_WORKERS]")
    a("--max_request_items", type=int, default=env_default("MAX_REQUEST_ITEMS", 64),
      help="max products (N) in one request [MAX_REQUEST_ITEMS]")
    a("--max_text_chars", type=int, default=env_default("MAX_TEXT_CHARS", 20_000),
      help="max characters of one designation or description [MAX_TEXT_CHARS]")
    a("--max_image_bytes", type=int, default=env_default("MAX_IMAGE_BYTES", 10 * 1024 * 1024),
      help="max size of one image file [MAX_IMAGE_BYTES]")
    a("--max_image_pixels", type=int, default=env_default("MAX_IMAGE_PIXELS", 40_000_000),
      help="max width x height of one image, against decompression bombs [MAX_IMAGE_PIXELS]")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        model_name=args.model_name, model_uri=args.model_uri, cache_dir=args.model_cache_dir,
        max_batch_size=args.max_batch_size, max_batch_time=args.max_batch_time_ms / 1000,
        preprocess_workers=args.preprocess_workers, max_image_pixels=args.max_image_pixels,
        limits=RequestLimits(max_items=args.max_request_items, max_text_chars=args.max_text_chars,
                             max_image_bytes=args.max_image_bytes))
