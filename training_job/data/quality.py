"""Data-quality checks of a training dataset, run after loading and before any training.

Measured on the raw CSV rows and on every image file (as the image cache decoded it, with the
serving decoder: header facts and refusal reasons), printed and logged to MLflow (``dq_*``
metrics and ``data_quality.json``):

- per column: blank share; for ``designation``/``description`` also the share with no text
  once cleaned (markup only);
- duplicate products (a ``productid`` seen on an earlier row) and duplicate texts;
- rows per class and the imbalance ratio (largest class / smallest non-empty class);
- images: missing, unreadable (what ``decode_image`` refuses, by reason), not 500x500, by format;
- rows whose ``prdtypecode`` is not one of the 27.

The rules of ``QualityConfig`` (``--max-unreadable-images`` & co.) decide: any violation fails
the job before training, with every violated rule named, and is recorded as a FAILED MLflow run.
Rows with an unreadable image or an unknown code, while under their limits, are left out.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten_common.data_layout import LABEL_COLUMN, TRAIN, X_COLUMNS
from rakuten_common.labels import LabelMap
from rakuten_common.preprocessing import ImageInfo, clean_text
from rakuten_common.profile import is_blank, model_vocabulary, product_features
from training_job.config import QualityConfig
from training_job.data.dataset import Dataset, DatasetError
from training_job.data.image_cache import ImageCache

logger = logging.getLogger("rakuten.training.data_quality")

#: The Rakuten set's image size: other sizes are counted (they are resized anyway).
EXPECTED_IMAGE_SIZE = (500, 500)
#: Row ids quoted per problem in the log and the report.
EXAMPLES = 10


class DataQualityError(DatasetError):
    """The dataset breaks one or more data-quality rules."""


@dataclass
class QualityReport:
    """What the checks measured, which rules were broken and which rows to leave out."""

    rows: int
    stats: dict[str, float]                      # flat numbers, logged as MLflow metrics dq_<name>
    details: dict                                # per column, per class, per reason, example row ids
    violations: list[str] = field(default_factory=list)
    excluded: set[int] = field(default_factory=set)  # row ids left out of training
    image_infos: dict[int, ImageInfo] = field(default_factory=dict)
    blank_descriptions: dict[int, bool] = field(default_factory=dict)

    def usable_rows(self, data: Dataset) -> np.ndarray:
        """Positions of the rows of ``data`` that training may use (those not excluded)."""
        return np.flatnonzero(~np.isin(data.row_ids, list(self.excluded)))

    def profile_features(self, data: Dataset, images: np.ndarray, vocabulary: list[str],
                         sequence_length: int) -> np.ndarray:
        """``rakuten_common.profile.product_features`` of ``data``'s rows (``images``: their decoded arrays)."""
        ids = [int(i) for i in data.row_ids]
        return product_features(data.texts, [self.blank_descriptions[i] for i in ids],
                                [self.image_infos[i] for i in ids], images, model_vocabulary(vocabulary),
                                sequence_length)

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows, "stats": self.stats, "violations": self.violations,
                           **self.details}, indent=2, default=str) + "\n"


def _read_table(data_dir: Path, max_rows: int | None) -> pd.DataFrame:
    """The raw rows as text (blank fields stay ``""``), as the loader reads them."""
    table = pd.read_csv(data_dir / TRAIN.features_csv, index_col=0, dtype=str, keep_default_na=False)
    labels = pd.read_csv(data_dir / TRAIN.labels_csv, index_col=0, dtype=str, keep_default_na=False)
    table = table.join(labels[[LABEL_COLUMN]])
    table.index = table.index.astype(np.int64)  # the loader already refused a non-integer index
    return table.iloc[:max_rows] if max_rows else table


def check_dataset(data_dir: Path, data: Dataset, images: ImageCache, config: QualityConfig,
                  max_rows: int | None = None) -> QualityReport:
    """Measure ``data`` (as loaded from ``data_dir``; ``images``: its image cache, row for row) and
    apply the rules of ``config``."""
    table = _read_table(Path(data_dir), max_rows)
    total = len(table)
    if not total:
        raise DataQualityError(f"{Path(data_dir) / TRAIN.features_csv} has no rows")
    stats: dict[str, float] = {"rows": total}
    details: dict = {"columns": {}}
    for column in (*X_COLUMNS, LABEL_COLUMN):
        values = table[column]
        entry = {"blank_share": float(values.map(is_blank).mean())}
        if column in ("designation", "description"):
            entry["no_text_share"] = float((values.map(clean_text) == "").mean())
        details["columns"][column] = entry
        stats.update({f"{column}_{name}": value for name, value in entry.items()})

    duplicated = table["productid"].duplicated() & (table["productid"].str.strip() != "")
    stats["duplicate_products"] = int(duplicated.sum())
    stats["duplicate_texts"] = int(table.duplicated(["designation", "description"]).sum())
    details["duplicate_product_rows"] = table.index[duplicated][:EXAMPLES].tolist()

    codes = set(LabelMap().codes)
    known = table[LABEL_COLUMN].map(lambda v: v.strip().isdigit() and int(v) in codes)
    unknown_rows = table.index[~known]
    stats["unknown_codes"] = len(unknown_rows)
    details["unknown_codes"] = dict(Counter(table.loc[unknown_rows, LABEL_COLUMN]).most_common(EXAMPLES))

    row_ids = data.row_ids.tolist()
    infos = dict(zip(row_ids, images.infos))
    failures = {row_ids[row]: reason for row, reason in images.failed.items()}
    readable = [info for row_id, info in infos.items() if row_id not in failures]
    stats["images_missing"] = len(data.missing_images)
    stats["images_unreadable"] = len(failures)
    stats["images_not_500x500"] = sum((i.width, i.height) != EXPECTED_IMAGE_SIZE for i in readable)
    details["images"] = {
        "missing_rows": data.missing_images[:EXAMPLES],
        "unreadable_by_reason": dict(Counter(failures.values())),
        "unreadable_rows": list(failures)[:EXAMPLES],
        "formats": dict(Counter(i.format for i in readable)),
        "sizes": {f"{w}x{h}": n for (w, h), n in Counter((i.width, i.height) for i in readable).most_common(EXAMPLES)},
    }

    # classes as training will see them: rows with a readable image and a known code
    used = Counter(int(code) for row_id, code in zip(data.row_ids.tolist(), data.codes.tolist())
                   if row_id not in failures and code in codes)
    class_rows = {code: used.get(code, 0) for code in sorted(codes)}
    present = [n for n in class_rows.values() if n]
    stats["imbalance_ratio"] = max(present) / min(present) if present else 0.0
    stats["smallest_class_rows"] = min(class_rows.values())
    details["class_rows"] = class_rows

    report = QualityReport(total, stats, details, image_infos=infos,
                           blank_descriptions={int(i): is_blank(d) for i, d in table["description"].items()})
    _apply_rules(report, config, class_rows)
    report.excluded = set(failures) | {int(i) for i in unknown_rows}
    return report


def _apply_rules(report: QualityReport, config: QualityConfig, class_rows: dict[int, int]) -> None:
    stats, total = report.stats, report.rows
    present = total - stats["images_missing"]

    def share_rule(name: str, count: float, of: float, limit: float, what: str) -> None:
        value = count / of if of else 0.0
        stats[f"{name}_share"] = value
        if limit < 1 and value > limit:
            report.violations.append(f"{what}: {int(count)} of {int(of)} rows ({value:.1%}), more than the "
                                     f"{limit:.1%} allowed (--max-{name.replace('_', '-')})")

    share_rule("missing_images", stats["images_missing"], total, config.max_missing_images, "no image file")
    share_rule("unreadable_images", stats["images_unreadable"], present, config.max_unreadable_images,
               f"unreadable images {report.details['images']['unreadable_by_reason']}")
    share_rule("unknown_codes", stats["unknown_codes"], total, config.max_unknown_codes,
               f"prdtypecode outside the 27 known ones {report.details['unknown_codes']}")
    share_rule("duplicate_products", stats["duplicate_products"], total, config.max_duplicate_products,
               "productid repeated from an earlier row")
    small = {code: n for code, n in class_rows.items() if n < config.min_class_rows}
    if small:
        report.violations.append(f"classes with fewer than {config.min_class_rows} rows (--min-class-rows): "
                                 + ", ".join(f"{code} ({n})" for code, n in small.items()))
    if config.max_imbalance_ratio > 0 and stats["imbalance_ratio"] > config.max_imbalance_ratio:
        report.violations.append(f"class imbalance ratio {stats['imbalance_ratio']:.1f} is above "
                                 f"{config.max_imbalance_ratio:g} (--max-imbalance-ratio)")


def log_report(report: QualityReport) -> None:
    """The report in the job's log: one line per group of measures, then each violation."""
    s, columns = report.stats, report.details["columns"]
    logger.info("Data quality of %d rows:", report.rows)
    logger.info("  blank: %s", ", ".join(f"{c} {e['blank_share']:.1%}" for c, e in columns.items()))
    logger.info("  no text once cleaned: designation %.1f%%, description %.1f%%",
                100 * columns["designation"]["no_text_share"], 100 * columns["description"]["no_text_share"])
    logger.info("  duplicate productid rows %d, duplicate designation+description rows %d",
                s["duplicate_products"], s["duplicate_texts"])
    logger.info("  classes: smallest %d rows, imbalance ratio %.1f; unknown prdtypecode rows %d",
                s["smallest_class_rows"], s["imbalance_ratio"], s["unknown_codes"])
    images = report.details["images"]
    reasons = f" {images['unreadable_by_reason']}" if images["unreadable_by_reason"] else ""
    logger.info("  images: missing %d, unreadable %d%s, not 500x500 %d, formats %s", s["images_missing"],
                s["images_unreadable"], reasons, s["images_not_500x500"], images["formats"])
    for violation in report.violations:
        logger.error("Data quality rule broken: %s", violation)
    if report.excluded and not report.violations:
        logger.warning("%d rows left out (unreadable image or unknown prdtypecode), e.g. row ids %s",
                       len(report.excluded), sorted(report.excluded)[:EXAMPLES])


def log_to_mlflow(report: QualityReport) -> None:
    """``dq_*`` metrics and ``data_quality.json`` in the active MLflow run."""
    import mlflow

    mlflow.log_metrics({f"dq_{name}": float(value) for name, value in report.stats.items()})
    mlflow.log_text(report.to_json(), "data_quality.json")

