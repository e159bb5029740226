"""Batch predictions: classify a whole test split with a published model into a CSV file.

    python -m training_job.batch_predict --model-uri URI --data-dir DIR --output FILE.csv [--top-k K]

Reads ``X_test_update.csv`` and ``images/image_test/`` (a folder or ``s3://bucket/prefix``),
pre-processes with the one shared implementation (``product_text``, ``decode_image``), runs the
model in batches through the same traced call as the server, and writes one row per product:
``productid,prdtypecode,probability`` (top-1), then ``prdtypecode_2,probability_2``... up to
``--top-k``. The output is a local path or ``s3://bucket/key.csv``. Products whose image file is
missing or unreadable are reported (count and first productids) and left out of the file.
Exit codes: 0 written, 1 the data, the model or the storage is wrong (one-line reason).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args, option

logger = logging.getLogger("rakuten.batch_predict")


@dataclass(frozen=True)
class BatchPredictConfig:
    model_uri: str = option("", env="MODEL_URI", metavar="URI",
                            help="the model: a version folder, a prefix of versions (its champion), local or "
                                 "s3://, or models:/rakuten-classifier@champion")
    data_dir: str = option("", env="DATA_DIR", metavar="DIR|URI",
                           help="dataset with X_test_update.csv and images/image_test/: a folder or s3://bucket/prefix")
    output: str = option("", env="OUTPUT", metavar="FILE|URI", help="the CSV to write: a path or s3://bucket/key.csv")
    top_k: int = option(1, env="TOP_K", help="codes per product, best first")
    batch_size: int = option(64, env="BATCH_SIZE", help="products per model call")
    workers: int = option(os.cpu_count() or 2, env="PREPROCESS_WORKERS", shown="the CPU count",
                          help="threads decoding images")
    cache_dir: Path = option(Path(tempfile.gettempdir()) / "rakuten-cache", env="CACHE_DIR", metavar="DIR",
                             help="where s3:// models and datasets are copied")


def _prepare(texts, paths, size):
    """Decode one chunk; rows whose image cannot be used come back in ``bad`` instead."""
    import numpy as np

    from rakuten_common.preprocessing import ImageError, decode_image

    images, keep, bad = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(decode_image(path.read_bytes(), size))
            keep.append(i)
        except (OSError, ImageError) as exc:
            bad.append((i, str(exc)))
    image_array = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return {"text": np.asarray([texts[i] for i in keep], dtype=object), "image": image_array}, keep, bad


def predict_rows(runner, texts: list[str], paths: list[Path], batch_size: int, workers: int):
    """Yield ``(chunk_start, kept_offsets, bad, probabilities)`` per chunk; decoding runs ``workers``
    chunks ahead of the model on a thread pool (Pillow releases the GIL), memory bounded by that window."""
    size = runner.spec.image_size
    starts = iter(range(0, len(paths), batch_size))
    window: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        def submit() -> bool:
            start = next(starts, None)
            if start is None:
                return False
            window.append((start, pool.submit(_prepare, texts[start:start + batch_size],
                                              paths[start:start + batch_size], size)))
            return True

        while len(window) < workers + 1 and submit():
            pass
        while window:
            start, future = window.popleft()
            inputs, keep, bad = future.result()
            submit()
            probabilities = runner(inputs) if keep else None
            yield start, keep, bad, probabilities


def write_predictions(config: BatchPredictConfig, path: Path) -> dict:
    import numpy as np

    from rakuten_common.runner import ModelRunner
    from rakuten_common.artifacts import fetch
    from rakuten_common.bundle import load_bundle
    from rakuten_common.data_layout import TEST
    from rakuten_common.preprocessing import product_text
    from training_job.data_source import local_dataset
    from training_job.dataset import image_paths, read_split

    data_dir = local_dataset(config.data_dir, config.cache_dir, TEST)
    table = read_split(data_dir, TEST)
    paths = image_paths(data_dir, table, TEST)
    present = [i for i, p in enumerate(paths) if p.is_file()]
    missing = [int(table["productid"].iloc[i]) for i in range(len(paths)) if not paths[i].is_file()]
    if missing:
        logger.warning("%d products have no image file and are left out (productids %s%s)", len(missing),
                       ", ".join(map(str, missing[:10])), " ..." if len(missing) > 10 else "")
    texts = [product_text(d, s) for d, s in zip(table["designation"].iloc[present], table["description"].iloc[present])]
    productids = table["productid"].to_numpy()[present]
    bundle, manifest = fetch(config.model_uri, Path(config.cache_dir) / "models", progress=logger.info)
    model, labels, spec = load_bundle(bundle)
    runner = ModelRunner(model, spec)
    k = max(1, min(config.top_k, len(labels)))
    codes = np.asarray(labels.codes)
    logger.info("Predicting %d products with model version %s (top %d) into %s", len(present), manifest.version, k,
                config.output)
    unreadable, written, started, last = [], 0, time.monotonic(), time.monotonic()
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["productid", "prdtypecode", "probability"]
                     + [f"{name}_{r}" for r in range(2, k + 1) for name in ("prdtypecode", "probability")])
        for start, keep, bad, probabilities in predict_rows(runner, texts, [paths[i] for i in present],
                                                             config.batch_size, config.workers):
            unreadable += [(int(productids[start + i]), why) for i, why in bad]
            if probabilities is None:
                continue
            best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
            for position, (row, ranked) in enumerate(zip(keep, best)):
                cells = [int(productids[start + row])]
                for index in ranked:
                    cells += [int(codes[index]), f"{probabilities[position, index]:.6f}"]
                out.writerow(cells)
            written += len(keep)
            now = time.monotonic()
            if now - last >= 5 or start + config.batch_size >= len(present):
                last = now
                logger.info("  %d/%d products, %.0f products/s", written + len(unreadable), len(present),
                            (written + len(unreadable)) / max(now - started, 1e-9))
    if unreadable:
        logger.warning("%d products have an unreadable image and are left out (first: productid %d, %s)",
                       len(unreadable), *unreadable[0])
    seconds = time.monotonic() - started
    return {"written": written, "missing": len(missing), "unreadable": len(unreadable), "seconds": seconds,
            "version": manifest.version}


def run(config: BatchPredictConfig) -> dict:
    """Predict and write the CSV (through a local temporary file when the output is on S3)."""
    from rakuten_common.storage import open_store, split_s3_uri

    if config.output.startswith("s3://"):
        bucket, key = split_s3_uri(config.output)
        directory, _, name = key.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            result = write_predictions(config, Path(tmp) / name)
            open_store(f"s3://{bucket}/{directory}").put_file(name, Path(tmp) / name)
    else:
        output = Path(config.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        result = write_predictions(config, partial)
        os.replace(partial, output)
    logger.info("Wrote %d predictions to %s in %.0f s (%.0f products/s; model %s)", result["written"],
                config.output, result["seconds"], result["written"] / max(result["seconds"], 1e-9), result["version"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_job.batch_predict", formatter_class=HelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    add_options(parser, BatchPredictConfig)
    config = from_args(BatchPredictConfig, parser.parse_args(argv))
    missing = [flag for flag, value in (("--model-uri", config.model_uri), ("--data-dir", config.data_dir),
                                        ("--output", config.output)) if not value]
    if missing:
        parser.error(f"{', '.join(missing)} required (or the environment variables named in --help)")
    configure_logging()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rakuten_common.artifacts import ArtifactError
    from rakuten_common.storage import StorageError
    from training_job.dataset import DatasetError

    configure_logging()
    try:
        run(config)
    except (DatasetError, ArtifactError, StorageError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
