"""The concatenated Rakuten classifier: text branch + image branch -> softmax over 27 codes.

Inputs are the outputs of ``rakuten_common.preprocessing``: ``text`` a ``(N, 1)`` string
tensor of cleaned product text and ``image`` a ``(N, size, size, 3)`` uint8 tensor. The output
``probabilities`` is ``(N, 27)``. Tokenisation is part of the model: the text branch's
``TextVectorization`` vocabulary (word 1- and 2-grams) and idf weights are learnt on the
training split and saved inside it.

Text branch: a bag of word 1-2-grams, TF-IDF weighted in-graph (``SparseTfIdf``), then a dense
projection (deep), and beside it a *wide* part: a linear layer on the same TF-IDF vector and on a
second in-graph TF-IDF bag of character 3-5-grams (``--wide-char-ngrams``), whose weights a
convex solver fits (``training.wide``), its logits fused with the deep ones. The bag was chosen
on 47 k real product texts (benchmarks/text_quality.py): it reached 0.771 weighted F1 where the
earlier embedding + Conv1D branch reached 0.718 and sequence encoders (CNN 0.744, bag + CNN
0.770) cost more for no gain; it reads every token, so long French descriptions are not
truncated. The character n-grams are the wide part's alone: a linear model on words and
characters reached 0.782 on that split where words alone reached 0.772, and the deep part does
not need them.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from rakuten_common.layers import LogitFusion, SparseTfIdf
from training_job.config import BACKBONES, ModelConfig

VECTORIZER_LAYER = "text_ngrams"
TFIDF_LAYER = "text_tfidf"
#: The wide part's own bag of character n-grams (only with ``config.wide_char_ngrams``).
CHAR_VECTORIZER_LAYER = "text_char_ngrams"
CHAR_TFIDF_LAYER = "text_char_tfidf"
WIDE_FEATURES_LAYER = "text_wide_features"
#: The wide part (a linear layer on the TF-IDF vector, weights from ``training.wide``), the
#: deep branches' logits, and the layer fusing both into the output.
WIDE_LAYER = "text_wide"
DEEP_LOGITS_LAYER = "deep_logits"
OUTPUT_LAYER = "probabilities"


def has_wide_part(config: ModelConfig) -> bool:
    return config.wide_solver != "none" and "text" in config.branches


def tfidf_bag(text: keras.KerasTensor, train_texts: tf.Tensor, vectorizer: layers.TextVectorization,
              tfidf_name: str, dropout: float = 0.0) -> keras.KerasTensor:
    """``text`` through ``vectorizer`` (adapted here on ``train_texts``) and a ``SparseTfIdf`` layer
    whose idf is counted on ``train_texts``: the sparse ``(N, vocabulary)`` TF-IDF rows."""
    vectorizer.adapt(train_texts, batch_size=1024)
    doc_freq = np.zeros(vectorizer.vocabulary_size(), "float64")
    for batch in tf.data.Dataset.from_tensor_slices(train_texts).batch(4096):
        np.add.at(doc_freq, vectorizer(batch).indices[:, 1].numpy(), 1.0)  # one entry per (row, n-gram)
    tfidf = SparseTfIdf(vectorizer.vocabulary_size(), dropout=dropout, name=tfidf_name)
    tfidf.set_idf(doc_freq, len(train_texts))
    return tfidf(vectorizer(text))


def text_branch(text: keras.KerasTensor, train_texts: np.ndarray, config: ModelConfig
                ) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """``(N, 1)`` cleaned text -> ``(N, text_units)`` deep features and the sparse ``(N, max_tokens)``
    TF-IDF vector they are computed from; vocabulary and idf from ``train_texts``."""
    vectorizer = layers.TextVectorization(
        max_tokens=config.max_tokens, standardize=None, split="whitespace", ngrams=config.text_ngrams,
        output_mode="count", sparse=True, name=VECTORIZER_LAYER)
    weights = tfidf_bag(text, as_tensor(train_texts), vectorizer, TFIDF_LAYER, config.text_token_dropout)
    x = layers.Dense(config.text_units, activation="relu", name="text_dense")(weights)
    return layers.Dropout(config.text_dropout, name="text_dropout")(x), weights


def wide_features(text: keras.KerasTensor, words: keras.KerasTensor, train_texts: np.ndarray,
                  config: ModelConfig) -> keras.KerasTensor:
    """What the wide part reads: the word TF-IDF rows ``words``, and beside them (concatenated,
    each block L2-normalised) a TF-IDF bag of the character n-grams ``config.wide_char_ngrams``
    (spaces included, across words: ``split="character"``), vocabulary and idf from ``train_texts``."""
    if not config.wide_char_ngrams:
        return words
    vectorizer = layers.TextVectorization(
        max_tokens=config.wide_char_tokens, standardize=None, split="character", ngrams=config.wide_char_ngrams,
        output_mode="count", sparse=True, name=CHAR_VECTORIZER_LAYER)
    chars = tfidf_bag(text, as_tensor(train_texts), vectorizer, CHAR_TFIDF_LAYER)
    return layers.Concatenate(axis=-1, name=WIDE_FEATURES_LAYER)([words, chars])


def as_tensor(texts: np.ndarray) -> tf.Tensor:
    return tf.constant(np.asarray(texts, dtype=str).reshape(-1))


def vocabulary(model: keras.Model) -> list[str]:
    """The text branch's n-grams, most frequent first ([] for an image-only model)."""
    names = {layer.name for layer in model.layers}
    if VECTORIZER_LAYER not in names:
        return []
    return [str(token) for token in model.get_layer(VECTORIZER_LAYER).get_vocabulary()]


def image_branch(image: keras.KerasTensor, config: ModelConfig) -> keras.KerasTensor:
    if config.backbone == "cnn":
        x = layers.Rescaling(1 / 255.0, name="image_scale")(image)
        for i, filters in enumerate(config.image_filters):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"image_conv{i}")(x)
            x = layers.BatchNormalization(name=f"image_bn{i}")(x)
            x = layers.Activation("relu", name=f"image_relu{i}")(x)
            x = layers.MaxPooling2D(2, name=f"image_pool{i}")(x)
        x = layers.GlobalAveragePooling2D(name="image_gap")(x)
    else:
        x = backbone_features(image, config)
    return layers.Dropout(config.dropout, name="image_dropout")(x)


def backbone_features(image: keras.KerasTensor, config: ModelConfig) -> keras.KerasTensor:
    """A keras.applications backbone, frozen when pretrained weights are given as a file."""
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}: use 'cnn' or one of {sorted(BACKBONES)}")
    constructor, (scale, offset) = BACKBONES[config.backbone]
    size = config.image_size
    backbone = getattr(keras.applications, constructor)(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    if config.backbone_weights:
        backbone.load_weights(str(config.backbone_weights))
        backbone.trainable = False
    x = layers.Rescaling(scale, offset=offset, name="image_scale")(image)
    return backbone(x)


def build_model(config: ModelConfig, train_texts: np.ndarray | None = None) -> keras.Model:
    """Build (not compile) the classifier with the branches named in ``config.branches``
    (``train_texts``: the training split's texts, from which the text branch learns its vocabulary).

    With a wide part (``config.wide_solver``), the output fuses the deep logits with the wide
    layer's; until ``training.wide`` sets the fusion, the output is the deep part's alone."""
    inputs, features, wide = {}, [], None
    if "text" in config.branches:
        inputs["text"] = keras.Input(shape=(1,), dtype="string", name="text")
        deep_text, tfidf = text_branch(inputs["text"], train_texts, config)
        features.append(deep_text)
        if has_wide_part(config):  # frozen: its weights come from a convex solver (training.wide)
            wide = layers.Dense(config.num_classes, trainable=False, name=WIDE_LAYER)(
                wide_features(inputs["text"], tfidf, train_texts, config))
    if "image" in config.branches:
        size = config.image_size
        inputs["image"] = keras.Input(shape=(size, size, 3), dtype="uint8", name="image")
        features.append(image_branch(inputs["image"], config))
    if not features:
        raise ValueError("at least one of the 'text' and 'image' branches is needed")
    x = layers.Concatenate(name="fusion")(features) if len(features) > 1 else features[0]
    x = layers.Dense(config.fusion_units, activation="relu", name="fusion_dense")(x)
    x = layers.Dropout(config.dropout, name="fusion_dropout")(x)
    if wide is None:
        outputs = layers.Dense(config.num_classes, activation="softmax", name=OUTPUT_LAYER)(x)
    else:  # wide & deep: softmax(a * deep logits + b * wide logits + c), a, b, c fitted after training
        deep = layers.Dense(config.num_classes, name=DEEP_LOGITS_LAYER)(x)
        outputs = LogitFusion(2, config.num_classes, name=OUTPUT_LAYER)([deep, wide])
    return keras.Model(inputs=inputs, outputs=outputs, name="rakuten_classifier")
