"""The wide part of the wide & deep text model: a linear layer on the TF-IDF vector, solved as a
linear baseline is, and its fusion with the deep branches.

1. ``fit_wide``, before the deep part trains: the model's own TF-IDF rows of the training split
   (its vocabulary and idf, so the features are exactly the ones served) go to a convex solver
   (scikit-learn ``LinearSVC`` or multinomial ``LogisticRegression``, balanced class weights);
   its regulariser C is chosen on the validation split, and the coefficients become the frozen
   ``text_wide`` layer's kernel and bias.
2. The deep part trains with the fusion at "deep alone" (``LogitFusion``'s initial weights).
   The wide part is not in the loss: fitted on the training rows, it nearly memorises them, and
   the deep part would learn nothing beside it.
3. ``fit_fusion``, after: ``softmax(a * deep + b * wide + c)`` with ``a, b >= 0`` and a class
   bias ``c`` fitted by minimising the cross-entropy on the validation split (a 29-parameter
   convex problem, L-BFGS), where neither part has seen the labels; ``check_fusion`` logs a
   warning if the fused model scores below the wide part alone there.

Both steps log to the active MLflow run: the solver, its C and each part's validation score.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import keras
import mlflow
import numpy as np
import scipy.optimize
import scipy.sparse
import tensorflow as tf
from sklearn.metrics import f1_score
from sklearn.svm import LinearSVC

from training_job.config import WIDE_REGULARISERS, ModelConfig
from training_job.training import tracking
from training_job.training.model import (
    DEEP_LOGITS_LAYER,
    OUTPUT_LAYER,
    TFIDF_LAYER,
    VECTORIZER_LAYER,
    WIDE_LAYER,
)

logger = logging.getLogger("rakuten.training")

#: Bias of a class the training split does not hold (the wide part never predicts it).
ABSENT_CLASS_BIAS = -10.0


@dataclass
class WideFit:
    """The wide part's solver, its chosen regulariser and validation weighted F1 per regulariser."""

    solver: str
    regulariser: float
    val_weighted_f1: float
    scores: dict[float, float]
    seconds: float


@dataclass
class FusionFit:
    """Validation weighted F1 of each part alone and fused, and the fusion's scales."""

    deep_weighted_f1: float
    wide_weighted_f1: float
    fused_weighted_f1: float
    deep_scale: float
    wide_scale: float


def tfidf_rows(model: keras.Model, texts: np.ndarray, batch_size: int = 4096) -> scipy.sparse.csr_matrix:
    """The model's own TF-IDF vectors of ``texts`` (inference mode) as a SciPy CSR matrix."""
    vectorizer, tfidf = model.get_layer(VECTORIZER_LAYER), model.get_layer(TFIDF_LAYER)
    parts = []
    for start in range(0, len(texts), batch_size):
        chunk = tf.constant(np.asarray(texts[start:start + batch_size], dtype=str).reshape(-1, 1))
        rows = tfidf(vectorizer(chunk), training=False)
        indices = rows.indices.numpy()
        parts.append(scipy.sparse.csr_matrix((rows.values.numpy(), (indices[:, 0], indices[:, 1])),
                                             shape=(len(chunk), tfidf.depth)))
    return scipy.sparse.vstack(parts).tocsr()


def solve(solver: str, regulariser: float, features: scipy.sparse.csr_matrix, targets: np.ndarray, seed: int):
    """One convex fit on ``features`` -> class indices ``targets`` (balanced class weights)."""
    if solver == "linearsvc":
        return LinearSVC(C=regulariser, class_weight="balanced", random_state=seed).fit(features, targets)
    if solver == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=regulariser, class_weight="balanced", max_iter=300,
                                  random_state=seed).fit(features, targets)
    raise ValueError(f"unknown wide solver {solver!r}: use one of {sorted(WIDE_REGULARISERS)} or 'none'")


def kernel_and_bias(estimator, depth: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted linear estimator as a Dense layer's ``(depth, classes)`` kernel and ``(classes,)`` bias
    (columns of classes it never saw: zero weights, a very negative bias)."""
    coef, intercept = np.asarray(estimator.coef_), np.asarray(estimator.intercept_)
    if len(estimator.classes_) == 2:  # binary: one decision function f, as logits (-f/2, f/2)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    kernel = np.zeros((depth, classes), "float32")
    bias = np.full(classes, ABSENT_CLASS_BIAS, "float32")
    kernel[:, estimator.classes_] = coef.T
    bias[estimator.classes_] = intercept
    return kernel, bias


def weighted_f1(targets: np.ndarray, scores: np.ndarray) -> float:
    return float(f1_score(targets, np.argmax(scores, axis=1), average="weighted"))


def fit_wide(model: keras.Model, config: ModelConfig, texts: np.ndarray, targets: np.ndarray,
             train: np.ndarray, val: np.ndarray, seed: int = 0) -> WideFit:
    """Fit the wide layer of ``model`` on the ``train`` rows (``targets``: class indices), the solver's
    regulariser chosen on the ``val`` rows, and load its weights into the model."""
    started = time.monotonic()
    solver = config.wide_solver
    if solver not in WIDE_REGULARISERS:
        raise ValueError(f"unknown wide solver {solver!r}: use one of {sorted(WIDE_REGULARISERS)} or 'none'")
    train_rows, val_rows = tfidf_rows(model, texts[train]), tfidf_rows(model, texts[val])
    scores, best, best_score = {}, None, -1.0
    for regulariser in WIDE_REGULARISERS[solver]:
        estimator = solve(solver, regulariser, train_rows, targets[train], seed)
        kernel, bias = kernel_and_bias(estimator, train_rows.shape[1], config.num_classes)
        scores[regulariser] = weighted_f1(targets[val], val_rows @ kernel + bias) if len(val) else 0.0
        logger.info("Wide part: %s C %g, validation weighted F1 %.4f", solver, regulariser, scores[regulariser])
        if scores[regulariser] > best_score:
            best, best_score = (regulariser, kernel, bias), scores[regulariser]
    regulariser, kernel, bias = best
    model.get_layer(WIDE_LAYER).set_weights([kernel, bias])
    fit = WideFit(solver, regulariser, best_score, scores, time.monotonic() - started)
    logger.info("Wide part: %s with C %g on %d TF-IDF features (validation weighted F1 %.4f, %.0f s)",
                solver, regulariser, train_rows.shape[1], best_score, fit.seconds)
    tracking.record("logging the wide part", mlflow.log_params, {"wide.solver": solver, "wide.regulariser": regulariser})
    tracking.record("logging the wide part", mlflow.log_metrics,
                    {"val_wide_weighted_f1": best_score, "wide_seconds": fit.seconds})
    return fit


def part_logits(model: keras.Model, inputs) -> tuple[np.ndarray, np.ndarray]:
    """The deep and the wide logits of ``model`` for ``inputs`` (a dataset or arrays, as ``predict``)."""
    parts = keras.Model(model.input, [model.get_layer(DEEP_LOGITS_LAYER).output, model.get_layer(WIDE_LAYER).output])
    deep, wide = parts.predict(inputs, verbose=0)
    return np.asarray(deep, "float64"), np.asarray(wide, "float64")


def fusion_weights(deep: np.ndarray, wide: np.ndarray, targets: np.ndarray,
                   bias_penalty: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b), c`` minimising the mean cross-entropy of ``softmax(a * deep + b * wide + c)``
    against ``targets`` (class indices), ``a, b >= 0``, a small L2 penalty on ``c``."""
    n, classes = deep.shape
    onehot = np.zeros((n, classes))
    onehot[np.arange(n), targets] = 1.0

    def loss(theta):
        a, b, c = theta[0], theta[1], theta[2:]
        z = a * deep + b * wide + c
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        error = (np.exp(log_p) - onehot) / n
        value = -(onehot * log_p).sum() / n + bias_penalty * (c @ c)
        grad = np.concatenate([[(error * deep).sum(), (error * wide).sum()], error.sum(axis=0) + 2 * bias_penalty * c])
        return value, grad

    start = np.concatenate([[1.0, 1.0], np.zeros(classes)])
    bounds = [(0.0, None), (0.0, None)] + [(None, None)] * classes
    theta = scipy.optimize.minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds).x
    return theta[:2], theta[2:]


def check_fusion(fusion: FusionFit) -> bool:
    """``True`` if the fused model scores at least as well as the wide part alone on the
    validation split; otherwise log a WARNING with both figures."""
    if fusion.fused_weighted_f1 >= fusion.wide_weighted_f1:
        return True
    logger.warning("Wide & deep: the fused model scores below its wide part alone on the validation split "
                   "(weighted F1 %.4f < %.4f); the deep part adds nothing there",
                   fusion.fused_weighted_f1, fusion.wide_weighted_f1)
    return False


def fit_fusion(model: keras.Model, inputs, targets: np.ndarray) -> FusionFit:
    """Fit the output's fusion of the deep and wide logits on validation ``inputs`` (a dataset of
    the validation rows, in order) and ``targets``, load it into the model and check it."""
    deep, wide = part_logits(model, inputs)
    scale, bias = fusion_weights(deep, wide, targets)
    model.get_layer(OUTPUT_LAYER).set_fusion(scale, bias)
    fused = scale[0] * deep + scale[1] * wide + bias
    fusion = FusionFit(weighted_f1(targets, deep), weighted_f1(targets, wide), weighted_f1(targets, fused),
                       float(scale[0]), float(scale[1]))
    logger.info("Wide & deep on the validation split: weighted F1 deep alone %.4f, wide alone %.4f, fused %.4f "
                "(fused logits %.3f x deep + %.3f x wide)", fusion.deep_weighted_f1, fusion.wide_weighted_f1,
                fusion.fused_weighted_f1, fusion.deep_scale, fusion.wide_scale)
    tracking.record("logging the fusion", mlflow.log_metrics,
                    {"val_deep_weighted_f1": fusion.deep_weighted_f1, "val_fused_weighted_f1": fusion.fused_weighted_f1,
                     "fusion_deep_scale": fusion.deep_scale, "fusion_wide_scale": fusion.wide_scale})
    check_fusion(fusion)
    return fusion
