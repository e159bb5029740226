"""The capture format (rakuten_common.captures): round trip, hostile lines, cut and corrupt files, keys."""
from __future__ import annotations

import dataclasses
import gzip
import json

import orjson
import pytest

from rakuten_common import captures
from rakuten_common.captures import (
    CaptureError,
    CaptureFileTruncated,
    CaptureRecord,
    image_key,
    parse_records_key,
    read_capture_file,
    records_key,
    write_capture_file,
)
from rakuten_common.storage import validate_key


def record(n: int = 0, **changes) -> CaptureRecord:
    fields = dict(request_id=f"req-{n}", productid=1_000_000 + n, designation=f"Lampe <b>LED</b> n°{n}",
                  description="Très &eacute;conome", text_sha256=captures.text_sha256(f"Lampe <b>LED</b> n°{n}",
                                                                                     "Très &eacute;conome"),
                  image_sha256=captures.image_sha256(b"jpeg %d" % n), model_version="20261203T101500Z-ab12",
                  top_k=[(2060, 0.8), (1560, 0.15), (10, 0.05)], time="2026-12-03T17:32:10.123Z")
    fields.update(changes)
    return CaptureRecord(**fields)


def test_round_trip_full_and_hashes():
    full = record(1)
    assert CaptureRecord.from_json(full.to_json()) == full
    assert full.image_key == f"images/{full.image_sha256}.jpg"
    assert (full.prediction, full.confidence, full.day) == (2060, 0.8, "2026-12-03")
    hashes = record(2, designation=None, description=None, content="hashes", productid=None)
    assert CaptureRecord.from_json(hashes.to_json()) == hashes
    assert hashes.image_key is None
    assert b"Lampe" not in hashes.to_json()


def test_text_hash_is_of_the_text_the_model_sees():
    # product_text cleans markup and case: the same product written differently hashes the same
    assert captures.text_sha256("Lampe <b>LED</b>", "Très &eacute;conome") == \
        captures.text_sha256("LAMPE LED", "très économe")
    assert captures.text_sha256("Lampe", "") != captures.text_sha256("Lampes", "")


def test_file_round_trip():
    records = [record(n) for n in range(50)]
    assert list(read_capture_file(write_capture_file(records))) == records


LINE = orjson.loads(record().to_json())


@pytest.mark.parametrize("change, message", [
    ({"v": 2}, "format version"),
    ({"extra": 1}, "unknown field"),
    ({"top_k": "x"}, "top_k must be a list"),
    ({"top_k": []}, "top_k must be a list"),
    ({"top_k": [[10, 0.1], [20, 0.9]]}, "best first"),
    ({"top_k": [[10, 1.5]]}, "probability"),
    ({"top_k": [[True, 0.5]]}, "prdtypecode must be an integer"),
    ({"top_k": [[10, 0.5, 3]]}, "pair"),
    ({"productid": "12"}, "productid must be an integer"),
    ({"productid": 2 ** 63}, "64-bit"),
    ({"productid": 2 ** 64}, "productid must be an integer"),
    ({"designation": 3}, "designation must be a string"),
    ({"designation": "x" * (captures.MAX_TEXT_CHARS + 1)}, "limit is"),
    ({"request_id": ""}, "must not be empty"),
    ({"text_sha256": "ABC"}, "text_sha256 must be 64"),
    ({"image_sha256": "../../etc/passwd"}, "image_sha256 must be 64"),
    ({"time": "yesterday"}, "time must be UTC"),
    ({"time": "2026-13-45T00:00:00Z"}, "not a valid date"),
    ({"content": "all"}, "content must be one of"),
    ({"content": "hashes"}, "must not hold designation"),
    ({"description": None}, "needs designation and description"),
])
def test_hostile_lines_are_refused_naming_the_problem(change, message):
    line = json.dumps({**LINE, **change})
    with pytest.raises(CaptureError, match=message):
        CaptureRecord.from_json(line)


@pytest.mark.parametrize("line, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"v": 1}', "misses field"),
    (b" " * (captures.MAX_LINE_BYTES + 1), "limit is"),
])
def test_lines_that_are_not_records(line, message):
    with pytest.raises(CaptureError, match=message):
        CaptureRecord.from_json(line)


def test_the_constructor_validates_too():
    with pytest.raises(CaptureError, match="best first"):
        record(top_k=[(1, 0.1), (2, 0.2)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        record().request_id = "other"


def test_a_bad_line_stops_the_file_unless_skipped():
    lines = [record(0).to_json(), b'{"v": 1, "oops": 1}', record(1).to_json()]
    data = gzip.compress(b"\n".join(lines) + b"\n")
    with pytest.raises(CaptureError, match="f.jsonl.gz line 2: capture line has unknown field"):
        list(read_capture_file(data, "f.jsonl.gz"))
    errors = []
    assert list(read_capture_file(data, "f.jsonl.gz", on_bad_line=errors.append)) == [record(0), record(1)]
    assert len(errors) == 1 and "line 2" in str(errors[0])


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_truncated_file_yields_the_lines_before_the_cut(keep):
    records = [record(n) for n in range(400)]
    data = write_capture_file(records)
    cut = data[:int(len(data) * keep)]
    read = []
    with pytest.raises(CaptureFileTruncated, match="truncated") as caught:
        for item in read_capture_file(cut, "cut.jsonl.gz"):
            read.append(item)
    assert 0 < len(read) < len(records)
    assert read == records[:len(read)]
    assert caught.value.records == len(read)


def test_files_that_are_not_gzip_and_several_members():
    with pytest.raises(CaptureError, match="not a valid gzip file"):
        list(read_capture_file(b"plain text, not gzip\n" * 10))
    with pytest.raises(CaptureFileTruncated):
        list(read_capture_file(b""))
    two = write_capture_file([record(0)]) + write_capture_file([record(1)])
    assert list(read_capture_file(two)) == [record(0), record(1)]
    no_newline = gzip.compress(record(3).to_json())
    assert list(read_capture_file(no_newline)) == [record(3)]


def test_a_gzip_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(captures, "MAX_FILE_BYTES", 1024 * 1024)
    with pytest.raises(CaptureError, match="decompresses to more than"):
        list(read_capture_file(gzip.compress(b"\n" * (2 * 1024 * 1024))))


def test_keys():
    key = records_key("2026-12-03", "predictor-abc-12", 7)
    assert key == "captures/date=2026-12-03/predictor-abc-12-000007.jsonl.gz"
    assert validate_key(key) == key
    parsed = parse_records_key(key)
    assert (parsed.day, parsed.pod, parsed.seq) == ("2026-12-03", "predictor-abc-12", 7)
    assert parse_records_key("captures/date=2026-12-03/notes.txt") is None
    assert parse_records_key("images/" + "a" * 64 + ".jpg") is None
    with pytest.raises(CaptureError):
        records_key("2026-12-3", "pod", 1)
    with pytest.raises(CaptureError):
        records_key("2026-12-03", "../pod", 1)
    assert image_key("a" * 64) == "images/" + "a" * 64 + ".jpg"
    with pytest.raises(CaptureError):
        image_key("../x")


def test_pod_name(monkeypatch):
    monkeypatch.setenv("POD_NAME", "rakuten-predictor-00001-deployment-7d9f/x y")
    assert captures.pod_name() == "rakuten-predictor-00001-deployment-7d9f-x-y"
    monkeypatch.setenv("POD_NAME", "p" * 253)  # the longest Kubernetes name still makes a valid key
    validate_key(records_key("2026-12-03", captures.pod_name() + "-20261203T101500", 123456))
    monkeypatch.delenv("POD_NAME")
    assert captures.pod_name()
    assert captures.utc_now().endswith("Z") and len(captures.utc_now()) == 24
