"""What a served request leaves behind: one access log line at INFO (no KServe timing traces) and
a V2 answer whose ``model_version`` field names the version (as ``parameters`` does)."""
from __future__ import annotations

import io
import json
import uuid

import pytest
from PIL import Image

from rakuten_common.v2_client import Product, infer_request, infer_url, post

pytestmark = pytest.mark.e2e


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (500, 500), (30, 90, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_served_request_logs_one_line_and_names_the_model_version(server_url, artifacts_dir):
    log = artifacts_dir / "model_server.log"
    before = log.read_text().splitlines()
    marker = uuid.uuid4().hex
    status, answer = post(infer_url(server_url), json.dumps(infer_request(
        [Product(f"Lampe {marker}", "", jpeg())], request_id=marker)).encode(), {"Content-Type": "application/json"})
    assert status == 200, answer
    assert answer["model_version"] and answer["model_version"] == answer["parameters"]["model_version"]
    added = log.read_text().splitlines()[len(before):]
    infer_lines = [line for line in added if "/infer" in line]
    assert len(infer_lines) == 1 and " INFO rakuten.access: " in infer_lines[0], added
    assert len(added) == 1, "one line per served request at INFO"
    assert not [line for line in added if "kserve.trace" in line], added
