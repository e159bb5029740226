"""The review queue: the captured products the model was least sure of, for people to label.

One row per product (the same ``productid``, else the same text and image, seen again counts
once: its latest capture is shown). Two kinds of rows, named in the ``sample`` column:

- ``uncertain``: top-1 probability at most ``max_confidence``, least confident first, at most
  ``per_class`` per predicted code (so one confusing class does not fill the queue);
- ``control``: a seeded random sample of the other products, so the labels also measure how
  often the confident answers are wrong (an estimate of the model's accuracy in production).

Hashes-only records (``content="hashes"``) are left out: there is nothing to show a reviewer,
and ``add_labels`` could not use the label. The ``prdtypecode`` column is left empty for the
reviewer; ``python -m training_job.add_labels`` reads the file back.
"""
from __future__ import annotations

import csv
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.captures import CONTENT_FULL, CaptureRecord
from rakuten_common.data_layout import LABEL_COLUMN
from training_job.data.capture_files import Captured

logger = logging.getLogger("rakuten.review_queue")

TOP = 3
COLUMNS = ("sample", "productid", "request_id", "designation", "description", "image_key", "model_version",
           "time", *(f"{name}_{i}" for i in range(1, TOP + 1) for name in ("code", "probability")), LABEL_COLUMN)
UNCERTAIN, CONTROL = "uncertain", "control"


@dataclass(frozen=True)
class QueueRow:
    sample: str
    record: CaptureRecord

    def as_dict(self) -> dict[str, object]:
        r = self.record
        row: dict[str, object] = {"sample": self.sample, "productid": "" if r.productid is None else r.productid,
                                  "request_id": r.request_id, "designation": r.designation,
                                  "description": r.description, "image_key": r.image_key,
                                  "model_version": r.model_version, "time": r.time, LABEL_COLUMN: ""}
        for i in range(TOP):
            code, probability = r.top_k[i] if i < len(r.top_k) else ("", "")
            row[f"code_{i + 1}"] = code
            row[f"probability_{i + 1}"] = "" if probability == "" else f"{probability:.4f}"
        return row


def product_key(record: CaptureRecord) -> tuple:
    """What identifies a product across captures: its ``productid``, else its text and image hashes."""
    if record.productid is not None:
        return ("productid", record.productid)
    return ("content", record.text_sha256, record.image_sha256)


def latest_per_product(captured: list[Captured]) -> list[CaptureRecord]:
    """One record per product: the latest (by time, then by read order)."""
    latest: dict[tuple, CaptureRecord] = {}
    for item in captured:
        key = product_key(item.record)
        if key not in latest or item.record.time >= latest[key].time:
            latest[key] = item.record
    return list(latest.values())


def build_queue(captured: list[Captured], max_confidence: float = 0.5, per_class: int = 0, control: int = 0,
                seed: int = 0) -> tuple[list[QueueRow], Counter]:
    """The queue's rows (uncertain ones least confident first, then the control sample) and counts
    of what was left out."""
    counts: Counter = Counter()
    products = latest_per_product(captured)
    counts["products"] = len(products)
    usable = [r for r in products if r.content == CONTENT_FULL]
    counts["hashes-only (left out)"] = len(products) - len(usable)
    uncertain: list[CaptureRecord] = []
    confident: list[CaptureRecord] = []
    for record in usable:
        (uncertain if record.confidence <= max_confidence else confident).append(record)
    uncertain.sort(key=lambda r: (r.confidence, r.time, r.request_id))
    chosen: list[QueueRow] = []
    per_code: Counter[int] = Counter()
    for record in uncertain:
        if per_class and per_code[record.prediction] >= per_class:
            counts["uncertain over the per-class cap (left out)"] += 1
            continue
        per_code[record.prediction] += 1
        chosen.append(QueueRow(UNCERTAIN, record))
    confident.sort(key=lambda r: (r.time, r.request_id, r.text_sha256, r.image_sha256))  # seeded draw, stable input
    sample = random.Random(seed).sample(confident, min(control, len(confident)))
    rows = chosen + [QueueRow(CONTROL, record) for record in sorted(sample, key=lambda r: r.confidence)]
    counts[UNCERTAIN] = len(chosen)
    counts[CONTROL] = len(sample)
    return rows, counts


def write_queue(rows: list[QueueRow], output: Path) -> Path:
    """The queue as a CSV file (written to ``<output>.partial`` then renamed)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)
    partial.replace(output)
    return output
