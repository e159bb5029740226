"""Custom Keras layers saved inside the model, so serving must be able to import them too.

``load_bundle`` imports this module before ``keras.saving.load_model``: the registration below
is what lets Keras rebuild a saved model that uses them.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="rakuten")
class SparseTfIdf(layers.Layer):
    """Sparse ``(N, V)`` n-gram counts -> sparse TF-IDF rows: ``(1 + ln tf) * idf``, L2-normalised.

    The recipe of scikit-learn's ``TfidfVectorizer(sublinear_tf=True)``, in-graph and sparse (a
    dense ``(N, 100k)`` matrix per batch would cost more than the model). ``idf`` is a saved,
    non-trainable weight (``set_idf``). While training, each non-zero entry is dropped with
    probability ``dropout`` (token dropout, a regulariser for a wide bag of n-grams). Keras 3.15's
    ``TextVectorization(output_mode="tf_idf", sparse=True)`` fails when called, hence this layer.
    """

    def __init__(self, depth: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.depth, self.dropout = int(depth), float(dropout)
        self.idf = self.add_weight(shape=(self.depth,), initializer="ones", trainable=False, name="idf")

    def set_idf(self, doc_freq: np.ndarray, n_docs: int) -> None:
        """scikit-learn's smooth idf: ``ln((1 + n) / (1 + df)) + 1``."""
        idf = np.log((1.0 + n_docs) / (1.0 + np.asarray(doc_freq, "float64"))) + 1.0
        self.idf.assign(idf.astype("float32"))

    def call(self, counts, training=False):
        values = 1.0 + tf.math.log(tf.cast(counts.values, "float32"))
        values = values * tf.gather(self.idf, counts.indices[:, 1])
        if training and self.dropout > 0:
            keep = tf.cast(tf.random.uniform(tf.shape(values)) >= self.dropout, "float32")
            values = values * keep / (1.0 - self.dropout)
        rows = tf.cast(counts.indices[:, 0], "int32")
        norms = tf.math.unsorted_segment_sum(tf.square(values), rows, tf.cast(counts.dense_shape[0], "int32"))
        values = values * tf.gather(tf.math.rsqrt(tf.maximum(norms, 1e-12)), rows)
        return tf.SparseTensor(counts.indices, values, counts.dense_shape)

    def compute_output_spec(self, counts, training=False):
        return keras.KerasTensor((counts.shape[0], self.depth), dtype="float32", sparse=True)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="rakuten")
class LogitFusion(layers.Layer):
    """``[logits_1, ..., logits_k]`` (each ``(N, C)``) -> ``softmax(sum_i scale_i * logits_i + bias)``.

    How the wide & deep text model combines its parts' logits. ``scale`` and ``bias`` are saved,
    non-trainable weights: they start as "the first part alone" (scale ``[1, 0, ...]``, bias 0),
    so the deep part trains as if alone, and are then fitted on the validation split
    (``set_fusion``; ``training_job.training.wide``), where no part has seen the labels.
    """

    def __init__(self, parts: int, classes: int, **kwargs):
        super().__init__(**kwargs)
        self.parts, self.classes = int(parts), int(classes)
        self.scale = self.add_weight(shape=(self.parts,), trainable=False, name="scale",
                                     initializer=keras.initializers.Constant([1.0] + [0.0] * (self.parts - 1)))
        self.bias = self.add_weight(shape=(self.classes,), initializer="zeros", trainable=False, name="bias")

    def set_fusion(self, scale: np.ndarray, bias: np.ndarray) -> None:
        self.scale.assign(np.asarray(scale, "float32").reshape(self.parts))
        self.bias.assign(np.asarray(bias, "float32").reshape(self.classes))

    def call(self, logits):
        fused = self.bias
        for i, part in enumerate(logits):
            fused = fused + self.scale[i] * part
        return keras.ops.softmax(fused, axis=-1)

    def compute_output_spec(self, logits):
        return keras.KerasTensor(logits[0].shape, dtype="float32")

    def get_config(self):
        return {**super().get_config(), "parts": self.parts, "classes": self.classes}
