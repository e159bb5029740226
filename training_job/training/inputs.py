"""``tf.data`` pipelines that stream batches: texts from memory, pixels from the on-disk image cache."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from training_job.data.image_cache import ImageCache


def batches(texts: np.ndarray, images: ImageCache | None, rows: np.ndarray, labels: np.ndarray | None,
            batch_size: int, branches: tuple[str, ...], shuffle_seed: int | None = None,
            sample_weights: np.ndarray | None = None) -> tf.data.Dataset:
    """Batches of ``({"text": (B, 1) str, "image": (B, s, s, 3) uint8}, labels[, weights])`` for ``rows``.

    Only one batch of pixels is in memory at a time (plus the prefetched one). With
    ``shuffle_seed``, every pass over the data visits ``rows`` in a new order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    epoch = [0]

    def generate():
        order = rows
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed + epoch[0]).permutation(rows)
            epoch[0] += 1
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            inputs = {}
            if "text" in branches:
                inputs["text"] = texts[chunk].astype(str).reshape(-1, 1)
            if "image" in branches:
                inputs["image"] = images.read(chunk)
            if labels is None:
                yield inputs
            elif sample_weights is None:
                yield inputs, labels[chunk]
            else:
                yield inputs, labels[chunk], sample_weights[chunk]

    spec = {}
    if "text" in branches:
        spec["text"] = tf.TensorSpec((None, 1), tf.string)
    if "image" in branches:
        spec["image"] = tf.TensorSpec((None, images.size, images.size, 3), tf.uint8)
    signature = spec if labels is None else (spec, tf.TensorSpec((None, *labels.shape[1:]), labels.dtype)) + (
        () if sample_weights is None else (tf.TensorSpec((None,), tf.float32),))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    cardinality = (len(rows) + batch_size - 1) // batch_size
    return dataset.apply(tf.data.experimental.assert_cardinality(cardinality)).prefetch(2)
