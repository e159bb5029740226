"""Scoring products with a published model: images decoded on a thread pool a few chunks ahead of
the model (Pillow releases the GIL), the model called through the traced ``ModelRunner``.

Shared by batch predictions (``training_job.prediction.predictions``) and the promotion gate.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rakuten_common.errors import ImageError
from rakuten_common.preprocessing import decode_image


def _prepare(texts, paths, size):
    """Decode one chunk; rows whose image cannot be used come back in ``bad`` instead."""
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
