"""The capture format: what the predictor records of a sampled inference, and how it is stored.

One definition for the writer (``model_server.capture``) and every reader (review queue,
dataset increments). Below a capture prefix (``s3://bucket/prefix`` or a local folder):

    captures/date=YYYY-MM-DD/<pod>-<seq>.jsonl.gz   immutable files of records, one JSON object a line
    images/<sha256>.jpg                              each image once, by the hash of its bytes

A record (``CaptureRecord``) is one product of one request: its request id, optional
``productid``, designation and description, the SHA-256 of the text the model saw
(``product_text``) and of the image bytes received, the model version, the top-k codes with
their probabilities (best first) and the UTC time. With ``content="hashes"`` the text is left
out (``None``) and no image is stored: the hashes still identify a product seen again.

Everything read back is hostile: ``CaptureRecord.from_json`` checks every field's type and
size and raises ``CaptureError`` naming the problem; ``read_capture_file`` yields the records
of a file, tolerating a file cut in the middle (the complete lines before the cut are yielded,
then ``CaptureFileTruncated`` is raised for the caller to count).
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from rakuten_common.errors import CaptureError
from rakuten_common.preprocessing import product_text

#: Version of the record layout, written in every line as ``"v"``.
FORMAT_VERSION = 1
CONTENT_FULL = "full"
CONTENT_HASHES = "hashes"
CONTENTS = (CONTENT_FULL, CONTENT_HASHES)

RECORDS_FOLDER = "captures"
IMAGES_FOLDER = "images"

# Bounds on what a reader accepts (a writer's record beyond them is not written).
MAX_LINE_BYTES = 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024  # decompressed, against gzip bombs
MAX_TEXT_CHARS = 100_000
MAX_ID_CHARS = 4096
MAX_VERSION_CHARS = 256
MAX_TOP_K = 1000
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_POD_UNSAFE = re.compile(r"[^0-9A-Za-z_.-]+")
_RECORDS_KEY = re.compile(
    rf"^{RECORDS_FOLDER}/date=(?P<day>\d{{4}}-\d{{2}}-\d{{2}})/(?P<pod>[0-9A-Za-z_][0-9A-Za-z_.-]*)-(?P<seq>\d+)\.jsonl\.gz$")
_FIELDS = ("v", "request_id", "productid", "designation", "description", "text_sha256", "image_sha256",
           "model_version", "top_k", "time", "content")


class CaptureFileTruncated(CaptureError):
    """A capture file that ends before its gzip end marker (cut while written or copied).
    The complete records before the cut were yielded; ``records`` says how many."""

    def __init__(self, message: str, records: int):
        super().__init__(message)
        self.records = records


# -- hashes and names ----------------------------------------------------------------------------
def text_sha256(designation: str | None, description: str | None) -> str:
    """SHA-256 (hex) of the text the model sees for these fields (``product_text``)."""
    return hashlib.sha256(product_text(designation, description).encode("utf-8")).hexdigest()


def image_sha256(data: bytes) -> str:
    """SHA-256 (hex) of an image file's bytes, as received."""
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    """The current UTC time as a record's ``time`` (``2026-12-03T17:32:10.123Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def pod_name() -> str:
    """This process's name in capture file names: ``$POD_NAME`` (downward API), else the host name,
    reduced to safe characters."""
    name = os.environ.get("POD_NAME", "").strip() or socket.gethostname() or "pod"
    name = _POD_UNSAFE.sub("-", name).lstrip("._-")[:80]  # + start time + seq: a key part stays <= 128
    return name or "pod"


def records_key(day: str, pod: str, seq: int) -> str:
    """``captures/date=<day>/<pod>-<seq>.jsonl.gz`` (relative to the capture prefix)."""
    if not _DAY.match(day):
        raise CaptureError(f"capture day {day!r} is not YYYY-MM-DD")
    if not isinstance(seq, int) or seq < 0:
        raise CaptureError(f"capture file sequence number must be a non-negative integer, got {seq!r}")
    key = f"{RECORDS_FOLDER}/date={day}/{pod}-{seq:06d}.jsonl.gz"
    if not _RECORDS_KEY.match(key):
        raise CaptureError(f"pod name {pod!r} is not usable in a capture file name")
    return key


@dataclass(frozen=True)
class RecordsFile:
    """What a records file's key says."""

    key: str
    day: str
    pod: str
    seq: int


def parse_records_key(key: str) -> RecordsFile | None:
    """The parts of a records file key (relative to the capture prefix), ``None`` for another key."""
    match = _RECORDS_KEY.match(key)
    if not match:
        return None
    return RecordsFile(key, match["day"], match["pod"], int(match["seq"]))


def image_key(sha256: str) -> str:
    """``images/<sha256>.jpg`` (relative to the capture prefix), whatever the image's format."""
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise CaptureError(f"image hash {str(sha256)[:80]!r} is not 64 lower-case hex digits")
    return f"{IMAGES_FOLDER}/{sha256}.jpg"


# -- the record ------------------------------------------------------------------------------------
def _check_text(value, name: str, limit: int, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise CaptureError(f"{name} must be a string{' or null' if optional else ''}, got {type(value).__name__}")
    if len(value) > limit:
        raise CaptureError(f"{name} has {len(value)} characters, limit is {limit}")


def _check_int(value, name: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise CaptureError(f"{name} must be an integer, got {type(value).__name__}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise CaptureError(f"{name} is outside the 64-bit integer range")


def _check_sha(value, name: str) -> None:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise CaptureError(f"{name} must be 64 lower-case hex digits")


def _top_k(value) -> tuple[tuple[int, float], ...]:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_TOP_K:
        raise CaptureError(f"top_k must be a list of 1 to {MAX_TOP_K} [prdtypecode, probability] pairs")
    pairs: list[tuple[int, float]] = []
    for index, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise CaptureError(f"top_k[{index}] must be a [prdtypecode, probability] pair")
        code, probability = pair
        _check_int(code, f"top_k[{index}] prdtypecode")
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) \
                or not math.isfinite(probability) or not 0.0 <= probability <= 1.0:
            raise CaptureError(f"top_k[{index}] probability must be a number from 0 to 1")
        if pairs and probability > pairs[-1][1]:
            raise CaptureError(f"top_k[{index}] is more probable than top_k[{index - 1}]: top_k must be best first")
        pairs.append((code, float(probability)))
    return tuple(pairs)


@dataclass(frozen=True)
class CaptureRecord:
    """One captured product. ``top_k``: ``((prdtypecode, probability), ...)``, best first.
    ``content="hashes"``: ``designation`` and ``description`` are ``None`` and no image is stored."""

    request_id: str
    productid: int | None
    designation: str | None
    description: str | None
    text_sha256: str
    image_sha256: str
    model_version: str
    top_k: tuple[tuple[int, float], ...]
    time: str
    content: str = CONTENT_FULL

    def __post_init__(self):
        _check_text(self.request_id, "request_id", MAX_ID_CHARS, optional=False)
        _check_int(self.productid, "productid", optional=True)
        _check_text(self.designation, "designation", MAX_TEXT_CHARS)
        _check_text(self.description, "description", MAX_TEXT_CHARS)
        _check_sha(self.text_sha256, "text_sha256")
        _check_sha(self.image_sha256, "image_sha256")
        _check_text(self.model_version, "model_version", MAX_VERSION_CHARS, optional=False)
        if not self.request_id or not self.model_version:
            raise CaptureError("request_id and model_version must not be empty")
        object.__setattr__(self, "top_k", _top_k(self.top_k))
        if not isinstance(self.time, str) or not _TIME.match(self.time):
            raise CaptureError("time must be UTC ISO 8601 like 2026-12-03T17:32:10.123Z")
        try:
            datetime.fromisoformat(self.time)
        except ValueError:
            raise CaptureError(f"time {self.time!r} is not a valid date and time") from None
        if self.content not in CONTENTS:
            raise CaptureError(f"content must be one of {list(CONTENTS)}, got {str(self.content)[:40]!r}")
        if self.content == CONTENT_HASHES and (self.designation is not None or self.description is not None):
            raise CaptureError('a content="hashes" record must not hold designation or description')
        if self.content == CONTENT_FULL and (self.designation is None or self.description is None):
            raise CaptureError('a content="full" record needs designation and description (may be "")')

    @property
    def day(self) -> str:
        """``YYYY-MM-DD`` of ``time``: the record's date partition."""
        return self.time[:10]

    @property
    def prediction(self) -> int:
        """The top-1 ``prdtypecode``."""
        return self.top_k[0][0]

    @property
    def confidence(self) -> float:
        """The top-1 probability."""
        return self.top_k[0][1]

    @property
    def image_key(self) -> str | None:
        """Where the image is stored (relative to the capture prefix), ``None`` for hashes-only records."""
        return image_key(self.image_sha256) if self.content == CONTENT_FULL else None

    def to_json(self) -> bytes:
        """One line of a records file (UTF-8 JSON, no newline)."""
        return orjson.dumps({"v": FORMAT_VERSION, "request_id": self.request_id, "productid": self.productid,
                             "designation": self.designation, "description": self.description,
                             "text_sha256": self.text_sha256, "image_sha256": self.image_sha256,
                             "model_version": self.model_version, "top_k": [list(p) for p in self.top_k],
                             "time": self.time, "content": self.content})

    @classmethod
    def from_json(cls, line: bytes | str) -> CaptureRecord:
        """Parse and validate one line; ``CaptureError`` names the first problem."""
        if len(line) > MAX_LINE_BYTES:
            raise CaptureError(f"capture line has {len(line)} bytes, limit is {MAX_LINE_BYTES}")
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CaptureError(f"capture line is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise CaptureError(f"capture line must be a JSON object, got {type(document).__name__}")
        if document.get("v") != FORMAT_VERSION:
            raise CaptureError(f"capture line has format version {str(document.get('v'))[:20]!r}, "
                               f"this code reads {FORMAT_VERSION}")
        unknown = sorted(set(document) - set(_FIELDS))
        if unknown:
            raise CaptureError(f"capture line has unknown field(s) {[name[:40] for name in unknown[:5]]}")
        missing = [name for name in _FIELDS if name not in document]
        if missing:
            raise CaptureError(f"capture line misses field(s) {missing}")
        return cls(**{name: document[name] for name in _FIELDS if name != "v"})


# -- records files ---------------------------------------------------------------------------------
def write_capture_file(records) -> bytes:
    """The bytes of a records file: one JSON line per record, gzip-compressed."""
    import gzip

    return gzip.compress(b"".join(record.to_json() + b"\n" for record in records), compresslevel=6, mtime=0)


def _decompressed(data: bytes, source: str, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The decompressed chunks of gzip ``data`` (several members allowed); ``CaptureFileTruncated``
    (``records`` 0, set by the caller) if it ends before an end marker."""
    pending = data
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    try:
        while True:
            out = decompressor.decompress(pending, chunk)
            pending = decompressor.unconsumed_tail
            total += len(out)
            if total > MAX_FILE_BYTES:
                raise CaptureError(f"{source} decompresses to more than {MAX_FILE_BYTES} bytes")
            if out:
                yield out
            if decompressor.eof:
                pending = decompressor.unused_data
                if not pending:
                    return
                decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif not out and not pending:
                raise CaptureFileTruncated(f"{source} is truncated: it ends before the gzip end marker", 0)
    except zlib.error as exc:
        raise CaptureError(f"{source} is not a valid gzip file: {exc}") from None


def read_capture_file(data: bytes, source: str = "capture file",
                      on_bad_line: Callable[[CaptureError], None] | None = None) -> Iterator[CaptureRecord]:
    """The records of one records file (the bytes of a ``.jsonl.gz``), in order.

    A line that is not a valid record raises ``CaptureError`` naming ``source`` and the line number,
    unless ``on_bad_line`` is given: it is then called with that error and reading goes on. A file cut
    in the middle yields every complete line before the cut, then raises ``CaptureFileTruncated``; a
    file that is not gzip raises ``CaptureError``. Readers catch ``CaptureError`` per file, so one
    bad file is counted, never fatal.
    """
    buffer = b""
    number = 0
    records = 0

    def parse(line: bytes) -> CaptureRecord | None:
        try:
            return CaptureRecord.from_json(line)
        except CaptureError as exc:
            error = CaptureError(f"{source} line {number}: {exc}")
            if on_bad_line is None:
                raise error from None
            on_bad_line(error)
            return None

    try:
        for chunk in _decompressed(data, source):
            buffer += chunk
            lines = buffer.split(b"\n")
            buffer = lines.pop()
            if len(buffer) > MAX_LINE_BYTES:
                raise CaptureError(f"{source} line {number + 1} is longer than {MAX_LINE_BYTES} bytes")
            for line in lines:
                number += 1
                if not line.strip():
                    continue
                record = parse(line)
                if record is not None:
                    records += 1
                    yield record
    except CaptureFileTruncated as exc:
        cut = f"; line {number + 1} was cut" if buffer else ""
        raise CaptureFileTruncated(f"{exc} ({records} complete records read{cut})", records) from None
    if buffer.strip():  # complete file whose last line has no newline
        number += 1
        record = parse(buffer)
        if record is not None:
            yield record
