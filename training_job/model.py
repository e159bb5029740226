"""The concatenated Rakuten classifier: text branch + image branch -> softmax over 27 codes.

Inputs are the outputs of ``rakuten_common.preprocessing``: ``text`` a ``(N, 1)`` string
tensor of cleaned product text (tokenised in-graph by a ``TextVectorization`` layer whose
vocabulary is learnt at training time and saved inside the model) and ``image`` a
``(N, size, size, 3)`` uint8 tensor. The output ``probabilities`` is ``(N, 27)``.
"""
from __future__ import annotations

import keras
from keras import layers

from training_job.config import BACKBONES, ModelConfig

def make_vectorizer(config: ModelConfig) -> layers.TextVectorization:
    """Token -> id layer; cleaning and splitting rules live in ``rakuten_common.preprocessing``."""
    return layers.TextVectorization(
        max_tokens=config.max_tokens, standardize=None, split="whitespace",
        output_mode="int", output_sequence_length=config.sequence_length, name="tokens")


def text_branch(text: keras.KerasTensor, vectorizer: layers.TextVectorization,
                config: ModelConfig) -> keras.KerasTensor:
    x = vectorizer(text)
    x = layers.Embedding(vectorizer.vocabulary_size(), config.embedding_dim, name="text_embedding")(x)
    x = layers.Conv1D(config.text_filters, 5, padding="same", activation="relu", name="text_conv")(x)
    x = layers.GlobalMaxPooling1D(name="text_pool")(x)
    return layers.Dropout(config.dropout, name="text_dropout")(x)


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


def build_model(config: ModelConfig, vectorizer: layers.TextVectorization | None) -> keras.Model:
    """Build (not compile) the classifier with the branches named in ``config.branches``."""
    inputs, features = {}, []
    if "text" in config.branches:
        inputs["text"] = keras.Input(shape=(1,), dtype="string", name="text")
        features.append(text_branch(inputs["text"], vectorizer, config))
    if "image" in config.branches:
        size = config.image_size
        inputs["image"] = keras.Input(shape=(size, size, 3), dtype="uint8", name="image")
        features.append(image_branch(inputs["image"], config))
    if not features:
        raise ValueError("at least one of the 'text' and 'image' branches is needed")
    x = layers.Concatenate(name="fusion")(features) if len(features) > 1 else features[0]
    x = layers.Dense(config.fusion_units, activation="relu", name="fusion_dense")(x)
    x = layers.Dropout(config.dropout, name="fusion_dropout")(x)
    outputs = layers.Dense(config.num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="rakuten_classifier")
