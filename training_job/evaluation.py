"""Classification metrics of the Rakuten challenge (weighted F1) and the confusion matrix."""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` counts rows of true class index ``i`` predicted as ``j``."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_metrics(cm: np.ndarray, codes: tuple[int, ...]) -> dict[str, float]:
    """Accuracy, weighted and macro F1, and per-class precision/recall/F1 keyed by code."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = support > 0
    metrics = {
        "accuracy": float(tp.sum() / max(support.sum(), 1)),
        "weighted_f1": float((f1 * support).sum() / max(support.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }
    for code, p, r, f in zip(codes, precision, recall, f1):
        metrics.update({f"precision_{code}": float(p), f"recall_{code}": float(r), f"f1_{code}": float(f)})
    return metrics


def confusion_figure(cm: np.ndarray, codes: tuple[int, ...], title: str):
    """A matplotlib figure of the row-normalised confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    normalised = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(11, 10))
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(codes)), [str(c) for c in codes], rotation=90)
    axes.set_yticks(range(len(codes)), [str(c) for c in codes])
    axes.set_xlabel("predicted prdtypecode")
    axes.set_ylabel("true prdtypecode")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    return figure
