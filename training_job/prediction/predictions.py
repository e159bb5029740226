"""Batch predictions of a test split into a CSV file (local, or ``s3://`` through a temporary file).

One row per product: ``productid,prdtypecode,probability`` (top-1), then
``prdtypecode_2,probability_2``... up to ``top_k``. Products whose image file is missing or
unreadable are reported (count and first productids) and left out of the file.
"""
from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from rakuten_common.artifacts import fetch
from rakuten_common.bundle import load_bundle
from rakuten_common.data_layout import TEST
from rakuten_common.preprocessing import product_text
from rakuten_common.runner import ModelRunner
from rakuten_common.storage import open_store, split_s3_uri
from training_job.data.dataset import image_paths, read_split
from training_job.data.source import local_dataset
from training_job.prediction.scoring import predict_rows
from training_job.prediction.settings import BatchPredictConfig

logger = logging.getLogger("rakuten.batch_predict")


def write_predictions(config: BatchPredictConfig, path: Path) -> dict:
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
                cells: list[int | str] = [int(productids[start + row])]
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
