"""Reading what the predictor captured (``rakuten_common.captures``) from a folder or ``s3://bucket/prefix``.

Every records file of the chosen days is read; what cannot be used is counted, never fatal: a
file cut in the middle gives its complete records and counts as truncated, a file that is not
gzip counts as unreadable, a line that is not a valid record counts as a bad line. The caller
prints those counts (``CaptureRead.summary``).
"""
from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rakuten_common.captures import (
    RECORDS_FOLDER,
    CaptureError,
    CaptureFileTruncated,
    CaptureRecord,
    RecordsFile,
    parse_records_key,
    read_capture_file,
)
from rakuten_common.errors import StorageError
from rakuten_common.storage import open_store
from training_job.data.dataset import DatasetError

logger = logging.getLogger("rakuten.captures")


class CaptureReadError(DatasetError):
    """The capture prefix cannot be read at all (unreachable, not a capture prefix)."""


@dataclass(frozen=True)
class Captured:
    """One record and the records file it came from."""

    record: CaptureRecord
    file: str  # records file key, relative to the capture prefix


@dataclass
class CaptureRead:
    """Every usable record of the files read, and what was not usable."""

    uri: str
    captured: list[Captured] = field(default_factory=list)
    files: int = 0
    problems: Counter = field(default_factory=Counter)  # "truncated files", "unreadable files", "bad lines"
    examples: list[str] = field(default_factory=list)   # the first few problem messages

    def note(self, kind: str, message: str, count: int = 1) -> None:
        self.problems[kind] += count
        if len(self.examples) < 5:
            self.examples.append(message)
        logger.warning("%s", message)

    def summary(self) -> str:
        problems = ", ".join(f"{n} {kind}" for kind, n in sorted(self.problems.items())) or "no problems"
        return f"{len(self.captured)} records from {self.files} capture files in {self.uri} ({problems})"


def records_files(uri: str, since: str | None = None, until: str | None = None) -> list[RecordsFile]:
    """The records files below ``uri`` whose day is in ``[since, until]`` (``YYYY-MM-DD``), in
    (day, pod, sequence) order."""
    try:
        objects = open_store(uri).list_objects(RECORDS_FOLDER)
    except StorageError as exc:
        raise CaptureReadError(f"captures {uri} cannot be listed: {exc}") from None
    files = [parsed for parsed in map(parse_records_key, (o.key for o in objects)) if parsed]
    chosen = [f for f in files if (since is None or f.day >= since) and (until is None or f.day <= until)]
    return sorted(chosen, key=lambda f: (f.day, f.pod, f.seq))


def read_captures(uri: str, since: str | None = None) -> CaptureRead:
    """Every record captured at ``uri`` on ``since`` (``YYYY-MM-DD``) or later (all days if ``None``)."""
    store = open_store(uri)
    result = CaptureRead(uri)
    files = records_files(uri, since)
    if not files:
        logger.warning("No capture files in %s/%s%s", uri, RECORDS_FOLDER, f" since {since}" if since else "")
    with tempfile.TemporaryDirectory(prefix="captures-") as tmp:
        for number, records_file in enumerate(files, 1):
            local = Path(tmp) / f"{number}.jsonl.gz"
            try:
                store.get_file(records_file.key, local)
                data = local.read_bytes()
            except StorageError as exc:
                raise CaptureReadError(f"capture file {records_file.key} cannot be read: {exc}") from None
            finally:
                local.unlink(missing_ok=True)
            result.files += 1

            def bad_line(error: CaptureError) -> None:
                result.note("bad lines", str(error))

            try:
                for record in read_capture_file(data, records_file.key, on_bad_line=bad_line):
                    if since is None or record.day >= since:
                        result.captured.append(Captured(record, records_file.key))
            except CaptureFileTruncated as exc:
                result.note("truncated files", f"{exc}: its complete records are used")
            except CaptureError as exc:
                result.note("unreadable files", f"{exc}: file skipped")
            if number % 100 == 0:
                logger.info("  read %d/%d capture files, %d records", number, len(files), len(result.captured))
    logger.info("Read %s", result.summary())
    return result


def fetch_image(uri: str, key: str, destination: Path) -> bool:
    """Copy the capture image ``key`` (``images/<sha256>.jpg``) to ``destination``; ``False`` if absent."""
    store = open_store(uri)
    try:
        if not store.exists(key):
            return False
        store.get_file(key, destination)
    except StorageError as exc:
        raise CaptureReadError(f"capture image {key} cannot be read: {exc}") from None
    return True
