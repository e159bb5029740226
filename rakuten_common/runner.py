"""The loaded Keras model behind one traced ``tf.function`` (no per-call Keras overhead)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from rakuten_common.bundle import PreprocessingSpec


class ModelRunner:
    """Calls the model on ``{"text": (N,) str, "image": (N, s, s, 3) uint8}`` -> ``(N, 27)`` float32."""

    def __init__(self, model, spec: PreprocessingSpec):
        self.spec = spec
        size = spec.image_size
        signature = {"text": tf.TensorSpec([None, 1], tf.string, name="text"),
                     "image": tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")}
        self.input_names = tuple(name for name in ("text", "image") if name in spec.inputs)
        self._model = model
        self._call = tf.function(lambda inputs: model(inputs, training=False),
                                 input_signature=[{name: signature[name] for name in self.input_names}])

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {}
        if "text" in self.input_names:
            feed["text"] = tf.constant(np.asarray(inputs["text"], dtype=object).astype(str).reshape(-1, 1))
        if "image" in self.input_names:
            feed["image"] = tf.constant(inputs["image"], dtype=tf.uint8)
        return self._call(feed).numpy()

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 32)) -> None:
        """Trace and run once per size so that the first real requests pay no compilation."""
        size = self.spec.image_size
        for n in batch_sizes:
            self({"text": np.array(["warm up"] * n, dtype=object),
                  "image": np.zeros((n, size, size, 3), dtype=np.uint8)})
