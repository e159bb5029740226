"""The promotion gate: score two published bundles on the same evaluation rows and decide.

The rows are the fixed evaluation split of the current dataset (``evaluation_mask``: by a hash
of ``productid``, never trained on) that have an image; both bundles are re-scored on them with
the serving preprocessing and the same traced model call as the server (``predict_rows``), and
only rows both could decode count. The challenger is promoted when

- its weighted F1 is at least the champion's minus ``tolerance``, and
- no class collapses: among classes with at least ``min_class_support`` evaluation rows, none
  has a challenger recall below ``recall_floor`` while also below the champion's recall there
  (a class the champion already misses does not block a challenger that misses it no worse).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rakuten_common.labels import LabelMap
from training_job.training.evaluation import classification_metrics

logger = logging.getLogger("rakuten.gate")


@dataclass(frozen=True)
class GatePolicy:
    tolerance: float
    recall_floor: float
    min_class_support: int


@dataclass
class EvaluationSet:
    """The evaluation rows of a dataset: model text, image file and true code of each."""

    texts: list[str]
    paths: list[Path]
    codes: np.ndarray
    fingerprint: str

    def __len__(self) -> int:
        return len(self.codes)


@dataclass
class Score:
    """One model on the evaluation rows."""

    weighted_f1: float
    accuracy: float
    macro_f1: float
    recall: dict[int, float] = field(default_factory=dict)   # prdtypecode -> recall
    support: dict[int, int] = field(default_factory=dict)    # prdtypecode -> evaluation rows
    rows: int = 0


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    collapsed: tuple[int, ...] = ()


def evaluation_set(data_dir: str, cache_dir: Path, eval_fraction: float,
                   increments: str = "all") -> EvaluationSet:
    """The evaluation split of the dataset at ``data_dir`` (a folder or ``s3://``; its base and the
    chosen increments, as training reads them), rows with an image."""
    from training_job.data.dataset import load_dataset
    from training_job.data.increments import training_data
    from training_job.training.splits import evaluation_mask

    data = load_dataset(training_data(data_dir, cache_dir, increments)[0])
    rows = np.flatnonzero(evaluation_mask(data.productids, eval_fraction))
    logger.info("Evaluation split of %s: %d of %d rows with an image (fraction %.2f by productid hash; "
                "dataset fingerprint %s)", data_dir, len(rows), len(data), eval_fraction, data.fingerprint[:12])
    return EvaluationSet([str(data.texts[i]) for i in rows], [data.image_paths[i] for i in rows],
                         data.codes[rows], data.fingerprint)


def predict_codes(bundle: Path, rows: EvaluationSet, batch_size: int, workers: int) -> np.ndarray:
    """The top-1 prdtypecode of every row by the bundle at ``bundle``; -1 where its image cannot be decoded."""
    from rakuten_common.bundle import load_bundle
    from rakuten_common.runner import ModelRunner
    from training_job.prediction.scoring import predict_rows

    model, labels, spec = load_bundle(bundle)
    runner = ModelRunner(model, spec)
    codes = np.asarray(labels.codes, dtype=np.int64)
    predicted = np.full(len(rows), -1, dtype=np.int64)
    for start, keep, _bad, probabilities in predict_rows(runner, rows.texts, rows.paths, batch_size, workers):
        if probabilities is not None:
            predicted[start + np.asarray(keep, dtype=np.int64)] = codes[np.argmax(probabilities, axis=1)]
    return predicted


def score(true_codes: np.ndarray, predicted_codes: np.ndarray, labels: LabelMap) -> Score:
    """Weighted F1, accuracy, macro F1 and per-class recall over the 27 codes."""
    y_true = np.array([labels.to_index(c) for c in true_codes], dtype=np.int64)
    y_pred = np.array([labels.to_index(c) for c in predicted_codes], dtype=np.int64)
    metrics = classification_metrics(y_true, y_pred, labels.codes)
    support = {code: int(np.sum(true_codes == code)) for code in labels.codes}
    return Score(metrics["weighted_f1"], metrics["accuracy"], metrics["macro_f1"],
                 {code: metrics[f"recall_{code}"] for code in labels.codes if support[code]},
                 {code: n for code, n in support.items() if n}, len(true_codes))


def score_pair(rows: EvaluationSet, challenger: np.ndarray, champion: np.ndarray | None,
               labels: LabelMap) -> tuple[Score, Score | None]:
    """Both scores on the rows both models could decode (the challenger's alone without a champion)."""
    usable = challenger >= 0 if champion is None else (challenger >= 0) & (champion >= 0)
    dropped = len(rows) - int(usable.sum())
    if dropped:
        logger.warning("%d evaluation rows have an image that cannot be decoded and do not count", dropped)
    if not usable.any():
        raise ValueError("no evaluation row can be scored: the evaluation split is empty or unreadable")
    truth = rows.codes[usable]
    return (score(truth, challenger[usable], labels),
            None if champion is None else score(truth, champion[usable], labels))


def decide(challenger: Score, champion: Score | None, policy: GatePolicy) -> Decision:
    """Promote or not, with a one-line reason naming both figures."""
    if champion is None:
        return Decision(True, f"no champion yet: the first model becomes champion "
                              f"(weighted F1 {challenger.weighted_f1:.4f} on {challenger.rows} rows)")
    figures = (f"weighted F1 {challenger.weighted_f1:.4f} vs champion {champion.weighted_f1:.4f} "
               f"on {challenger.rows} evaluation rows")
    if challenger.weighted_f1 < champion.weighted_f1 - policy.tolerance:
        return Decision(False, f"{figures}: worse by {champion.weighted_f1 - challenger.weighted_f1:.4f}, "
                               f"more than the tolerance {policy.tolerance:g}")
    collapsed = tuple(sorted(
        code for code, n in challenger.support.items()
        if n >= policy.min_class_support and challenger.recall[code] < policy.recall_floor
        and challenger.recall[code] < champion.recall.get(code, 0.0)))
    if collapsed:
        shown = ", ".join(f"{code} ({challenger.recall[code]:.2f} vs {champion.recall[code]:.2f})"
                          for code in collapsed[:5])
        return Decision(False, f"{figures}, but recall collapses below {policy.recall_floor:g} for "
                               f"{len(collapsed)} class(es): {shown}{' ...' if len(collapsed) > 5 else ''}",
                        collapsed)
    return Decision(True, f"{figures}: within the tolerance {policy.tolerance:g}, no class below the recall floor "
                          f"{policy.recall_floor:g}")
