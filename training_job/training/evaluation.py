"""Classification metrics of the Rakuten challenge (weighted F1) and the confusion matrix."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` counts rows of true class index ``i`` predicted as ``j``."""
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, codes: tuple[int, ...]) -> dict[str, float]:
    """Accuracy, weighted and macro F1 (over the classes present), per-class precision/recall/F1 by code."""
    labels = np.arange(len(codes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    present = labels[support > 0]
    metrics = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "weighted_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
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


def per_class_f1_figure(metrics: dict[str, float], codes: tuple[int, ...], title: str):
    """A matplotlib figure of each class's F1 (``f1_<code>`` of ``classification_metrics``), worst first,
    with the weighted F1 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = sorted((metrics[f"f1_{code}"], str(code)) for code in codes)
    figure, axes = plt.subplots(figsize=(8, 8))
    axes.barh([code for _, code in scores], [f1 for f1, _ in scores], color="tab:blue")
    axes.axvline(metrics["weighted_f1"], color="tab:red", linestyle="--",
                 label=f"weighted F1 {metrics['weighted_f1']:.3f}")
    axes.set_xlim(0, 1)
    axes.set_xlabel("F1")
    axes.set_ylabel("prdtypecode")
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure
