"""Corrected labels + captured records -> a new dataset increment, with its audit trail.

``join`` matches each row of a labels file (a filled-in review queue, or any CSV with
``prdtypecode`` and ``productid`` and/or ``request_id``) with the captured records: by
``productid`` when the row gives one, else by ``request_id`` (narrowed by ``image_key`` when one
request held several products). Rows that cannot be used are skipped, each with a counted
reason (``SKIPS``), never an error. When a product is labelled twice the later row wins.

``write_increment`` stages the joined rows in the raw layout, runs the data-quality checks on
them (unreadable images, unknown codes, duplicates inside the increment and against the dataset
so far) and, only if they pass, copies the increment to ``DATASET/increments/<name>/``: images,
then the two CSV files, then ``manifest.json`` last. An increment that exists, even partly
(a crash before its manifest), is refused: increments are written once and never changed.

Identifiers: captured images have no Rakuten ``imageid``, so ``imageid`` is derived from the
image's SHA-256; a capture without ``productid`` gets one derived from its text and image hashes.
Both lie in a reserved range, ``SYNTHETIC_BASE`` (10^12) to 2 x 10^12, far above the real set's
ids (< 5 x 10^9), so they never collide with a shop's ids, and the same product captured again
gets the same id (a later label of it wins in training).
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rakuten_common.bundle import new_version
from rakuten_common.captures import CONTENT_FULL, CaptureRecord
from rakuten_common.data_layout import LABEL_COLUMN, TRAIN, X_COLUMNS
from rakuten_common.errors import StorageError
from rakuten_common.labels import PRDTYPECODES
from rakuten_common.storage import open_store
from training_job.config import QualityConfig
from training_job.data import image_cache, increments
from training_job.data.capture_files import Captured, CaptureRead, fetch_image, read_captures
from training_job.data.dataset import DatasetError, load_dataset
from training_job.data.quality import DataQualityError, QualityReport, check_dataset, log_report
from training_job.data.settings import AddLabelsConfig

logger = logging.getLogger("rakuten.add_labels")

SYNTHETIC_BASE = 10 ** 12
#: Why a label row was not added (the manifest counts each).
NO_LABEL = "no label (prdtypecode empty)"
UNKNOWN_CODE = "unknown prdtypecode"
BAD_ID = "productid is not an integer"
NO_ID = "neither productid nor request_id"
NO_CAPTURE = "matches no capture"
AMBIGUOUS = "request_id matches several products (give productid or image_key)"
HASHES_ONLY = "hashes-only capture (no text or image stored)"
NO_IMAGE = "image missing from the capture store"
SUPERSEDED = "superseded by a later row for the same product"
SKIPS = (NO_LABEL, UNKNOWN_CODE, BAD_ID, NO_ID, NO_CAPTURE, AMBIGUOUS, HASHES_ONLY, NO_IMAGE, SUPERSEDED)
#: Image decoding size of the checks (they only need to know an image decodes).
CHECK_IMAGE_SIZE = 32


class FeedbackError(DatasetError):
    """The labels file or the captures cannot be turned into an increment."""


class IncrementExists(FeedbackError):
    """An increment of that name exists (complete or not): increments are immutable."""


def _id(prefix: str, *hashes: str) -> int:
    digest = hashlib.sha256(":".join((prefix, *hashes)).encode()).hexdigest()
    return SYNTHETIC_BASE + int(digest[:15], 16) % SYNTHETIC_BASE


def synthetic_productid(record: CaptureRecord) -> int:
    """A stable ``productid`` for a capture that has none, from its text and image hashes."""
    return _id("productid", record.text_sha256, record.image_sha256)


def synthetic_imageid(record: CaptureRecord) -> int:
    """The ``imageid`` of a captured image, from its hash."""
    return _id("imageid", record.image_sha256)


@dataclass
class Joined:
    """A label row matched with its captured record."""

    record: CaptureRecord
    file: str             # records file it came from
    prdtypecode: int
    productid: int
    imageid: int
    synthetic_productid: bool


@dataclass
class JoinResult:
    rows: list[Joined]
    label_rows: int
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, what: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(what)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return (f"{self.label_rows} label rows: {len(self.rows)} joined, {sum(self.skipped.values())} skipped"
                + (f" ({reasons})" if reasons else ""))


def read_labels(path: Path) -> tuple[pd.DataFrame, str]:
    """The labels file as text columns, and its SHA-256."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FeedbackError(f"labels file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"labels file {path} is not a CSV file: {str(exc).splitlines()[0]}") from None
    if LABEL_COLUMN not in table.columns:
        raise FeedbackError(f"labels file {path} has no {LABEL_COLUMN} column (columns: {list(table.columns)[:10]})")
    if "productid" not in table.columns and "request_id" not in table.columns:
        raise FeedbackError(f"labels file {path} needs a productid or a request_id column to match captures")
    return table, hashlib.sha256(data).hexdigest()


def _latest(items: list[Captured]) -> Captured | None:
    """The latest full record among ``items`` (``None`` if all are hashes-only)."""
    full = [item for item in items if item.record.content == CONTENT_FULL]
    return max(full, key=lambda item: item.record.time) if full else None


def join(labels: pd.DataFrame, captured: list[Captured]) -> JoinResult:
    """Match each label row with its captured product; a product labelled twice keeps the later row."""
    by_productid: dict[int, list[Captured]] = {}
    by_request: dict[str, list[Captured]] = {}
    for item in captured:
        if item.record.productid is not None:
            by_productid.setdefault(item.record.productid, []).append(item)
        by_request.setdefault(item.record.request_id, []).append(item)
    codes = set(PRDTYPECODES)
    result = JoinResult([], len(labels))
    chosen: dict[int, Joined] = {}  # by productid
    for number, row in enumerate(labels.to_dict("records"), start=2):  # line 1 is the header
        where = f"line {number}"
        code_text = str(row.get(LABEL_COLUMN, "")).strip()
        if not code_text:
            result.skip(NO_LABEL, where)
            continue
        if not code_text.isdigit() or int(code_text) not in codes:
            result.skip(UNKNOWN_CODE, f"{where}: {code_text[:20]!r}")
            continue
        productid_text = str(row.get("productid", "")).strip()
        request_id = str(row.get("request_id", "")).strip()
        if productid_text:
            try:
                matches = by_productid.get(int(productid_text), [])
            except ValueError:
                result.skip(BAD_ID, f"{where}: {productid_text[:20]!r}")
                continue
        elif request_id:
            matches = by_request.get(request_id, [])
            image_key = str(row.get("image_key", "")).strip()
            if image_key:
                matches = [m for m in matches if m.record.image_key == image_key]
            if len({(m.record.text_sha256, m.record.image_sha256) for m in matches}) > 1:
                result.skip(AMBIGUOUS, f"{where}: {request_id[:40]}")
                continue
        else:
            result.skip(NO_ID, where)
            continue
        if not matches:
            result.skip(NO_CAPTURE, f"{where}: {productid_text or request_id[:40]}")
            continue
        item = _latest(matches)
        if item is None:
            result.skip(HASHES_ONLY, f"{where}: {productid_text or request_id[:40]}")
            continue
        record = item.record
        productid = record.productid if record.productid is not None else synthetic_productid(record)
        joined = Joined(record, item.file, int(code_text), productid, synthetic_imageid(record),
                        record.productid is None)
        if productid in chosen:
            result.skip(SUPERSEDED, f"productid {productid}")
        chosen[productid] = joined
    result.rows = list(chosen.values())
    return result


def stage(rows: list[Joined], captures_uri: str, folder: Path, result: JoinResult) -> list[Joined]:
    """Write ``rows`` in the raw layout under ``folder`` (images fetched from the capture store;
    a row whose image is missing there is skipped). Returns the rows written."""
    image_dir = Path(folder) / TRAIN.image_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for number, row in enumerate(rows, 1):
        target = TRAIN.image_path(folder, row.imageid, row.productid)
        if fetch_image(captures_uri, row.record.image_key, target):
            written.append(row)
        else:
            result.skip(NO_IMAGE, row.record.image_key)
        if number % 200 == 0:
            logger.info("  fetched %d/%d captured images", number, len(rows))
    index = range(len(written))
    features = pd.DataFrame({"designation": [r.record.designation for r in written],
                             "description": [r.record.description for r in written],
                             "productid": [r.productid for r in written],
                             "imageid": [r.imageid for r in written]}, index=index, columns=list(X_COLUMNS))
    features.to_csv(Path(folder) / TRAIN.features_csv)
    pd.DataFrame({LABEL_COLUMN: [r.prdtypecode for r in written]}, index=index).to_csv(Path(folder) / TRAIN.labels_csv)
    return written


def existing_productids(dataset_uri: str, scratch: Path) -> set[int]:
    """Every ``productid`` of the dataset so far: its base and its complete increments."""
    store = open_store(dataset_uri)
    keys = [TRAIN.features_csv] + [increments.increment_key(name, TRAIN.features_csv)
                                   for name in increments.complete_increments(dataset_uri)]
    found: set[int] = set()
    for number, key in enumerate(keys):
        target = Path(scratch) / f"existing-{number}.csv"
        try:
            if not store.exists(key):
                continue
            store.get_file(key, target)
        except StorageError as exc:
            raise FeedbackError(f"dataset {dataset_uri} cannot be read: {exc}") from None
        column = pd.read_csv(target, usecols=["productid"], dtype=str, keep_default_na=False)["productid"]
        found.update(int(v) for v in column if v.strip().lstrip("-").isdigit())
    return found


def check(staged: Path, existing: set[int], config: AddLabelsConfig, cache_dir: Path) -> QualityReport:
    """The data-quality checks of the staged increment; ``DataQualityError`` names every broken rule."""
    rules = QualityConfig(max_missing_images=0.0, max_unreadable_images=config.max_unreadable_images,
                          max_unknown_codes=0.0, min_class_rows=0, max_duplicate_products=1.0,
                          max_imbalance_ratio=0.0)
    data = load_dataset(staged)
    images = image_cache.build(data.image_paths, CHECK_IMAGE_SIZE, Path(cache_dir) / "increment-checks", 2)
    report = check_dataset(staged, data, images, rules)
    again = int(sum(int(p) in existing for p in data.productids))
    report.stats["products_already_in_dataset"] = again
    duplicates = report.stats["duplicate_products"] + again
    share = duplicates / report.rows
    if share > config.max_duplicate_products:
        report.violations.append(f"{duplicates} of {report.rows} products ({share:.1%}) are already in the dataset "
                                 f"or repeated, more than the {config.max_duplicate_products:.1%} allowed "
                                 f"(--max-duplicate-products)")
    log_report(report)
    logger.info("  %d products already in the dataset (their new label wins in training)", again)
    if report.violations:
        raise DataQualityError("increment refused by the data-quality checks, nothing written: "
                               + "; ".join(report.violations))
    return report


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class IncrementResult:
    name: str
    uri: str
    manifest: dict


def write_increment(config: AddLabelsConfig, code_version: str) -> IncrementResult:
    """The whole of ``add_labels``: read, join, stage, check, then copy the increment (manifest last)."""
    name = config.increment or new_version()
    key = increments.increment_key(name)
    store = open_store(config.dataset)

    def refuse_existing() -> None:
        try:
            present = store.has_prefix(key)
        except StorageError as exc:
            raise FeedbackError(f"dataset {config.dataset} cannot be read: {exc}") from None
        if present:
            raise IncrementExists(f"increment {name} already exists in {config.dataset} (or a crashed write left "
                                  f"part of it, which is never read): increments are immutable, use another name")

    refuse_existing()
    labels, labels_sha256 = read_labels(config.labels)
    read: CaptureRead = read_captures(config.captures, config.since)
    joined = join(labels, read.captured)
    with tempfile.TemporaryDirectory(prefix="increment-") as tmp:
        staged = Path(tmp) / name
        rows = stage(joined.rows, config.captures, staged, joined)
        logger.info("Labels %s: %s", config.labels, joined.summary())
        if not rows:
            raise FeedbackError(f"nothing to add from {config.labels}: {joined.summary()}")
        report = check(staged, existing_productids(config.dataset, Path(tmp)), config, Path(config.cache_dir))
        files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        images = [f for f in files if f.startswith(TRAIN.image_dir + "/")]
        manifest = {
            "increment": name,
            "dataset": str(config.dataset),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code_version": code_version,
            "captures": str(config.captures),
            "captures_since": config.since,
            "source_capture_files": sorted({row.file for row in rows}),
            "capture_files_read": read.files,
            "capture_problems": dict(read.problems),
            "labels_file": str(config.labels),
            "labels_sha256": labels_sha256,
            "label_rows": joined.label_rows,
            "rows_added": len(rows),
            "rows_skipped": dict(joined.skipped),
            "skip_examples": joined.examples,
            "productids_synthesised": sum(row.synthetic_productid for row in rows),
            "model_versions": dict(Counter(row.record.model_version for row in rows)),
            "rows_per_prdtypecode": {str(k): v for k, v in sorted(Counter(r.prdtypecode for r in rows).items())},
            "quality": {"stats": report.stats, "violations": report.violations},
            "files": {f: _sha256(staged / f) for f in (TRAIN.features_csv, TRAIN.labels_csv)},
            "images": len(images),
        }
        (staged / increments.MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        refuse_existing()  # again, just before writing: another writer may have taken the name meanwhile
        logger.info("Writing increment %s: %d images, then %s, %s, %s last", name, len(images),
                    TRAIN.features_csv, TRAIN.labels_csv, increments.MANIFEST)
        try:
            for number, file in enumerate([*images, TRAIN.features_csv, TRAIN.labels_csv, increments.MANIFEST], 1):
                store.put_file(f"{key}/{file}", staged / file)
                if number % 500 == 0:
                    logger.info("  %d/%d files written", number, len(images) + 3)
        except StorageError as exc:
            raise FeedbackError(f"increment {name} could not be written (no manifest, so it is never read; "
                                f"write it again under another name): {exc}") from None
    return IncrementResult(name, increments.increment_uri(config.dataset, name), manifest)
