"""What a served request leaves behind: one access log line at INFO (no KServe timing traces) and
a V2 answer whose ``model_version`` field names the version (as ``parameters`` does)."""
from __future__ import annotations

import io
import json
import logging
import time
import uuid

import pytest
from PIL import Image

from rakuten_common.processes import wait_until
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
        [Product(f"Lampe {marker}", "", jpeg())], request_id=marker)).encode(),
        {"Content-Type": "application/json", "X-Request-Id": marker})
    assert status == 200, answer
    assert answer["model_version"] and answer["model_version"] == answer["parameters"]["model_version"]

    def new_lines() -> list[str]:
        return log.read_text().splitlines()[len(before):]

    # The access line is written once the answer has been sent: the client can see the answer first.
    wait_until(lambda: any(marker in line for line in new_lines()), 10, "the access log line", interval=0.05)
    time.sleep(0.3)  # a second line, if the server wrote one, would follow straight after
    added = new_lines()
    ours = [line for line in added if marker in line]
    assert len(ours) == 1 and " INFO rakuten.access: " in ours[0] and "/infer" in ours[0], added
    assert len([line for line in added if "/infer" in line]) == 1, "one line per served request at INFO"
    assert not [line for line in added if "kserve.trace" in line], added


def test_a_rate_limited_log_writes_at_most_its_share_a_second_and_says_how_many_it_left_out(caplog):
    """The rule for error lines and for the access lines of refusals (fake clock: windows by hand)."""
    from rakuten_common.logs import RateLimitedLog

    now = [100.2]
    lines = RateLimitedLog(logging.getLogger("rakuten.test.limited"), per_second=3, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="rakuten.test.limited"):
        for i in range(8):
            lines.log(logging.INFO, "refused %d", i)
        now[0] = 100.9  # same second: still full
        lines.log(logging.INFO, "refused %d", 8)
        now[0] = 101.0
        lines.log(logging.INFO, "refused %d", 9)
        lines.log(logging.INFO, "refused %d", 10)
    assert [record.getMessage() for record in caplog.records] == [
        "refused 0", "refused 1", "refused 2", "refused 9 (6 similar lines left out)", "refused 10"]


def test_refusal_access_lines_are_limited_by_the_option_and_0_writes_every_one(caplog):
    """``--refusal_log_lines_per_second``: the access lines of 503s only; other statuses always logged."""
    from model_server import access

    def lines_for(status: int, count: int) -> int:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rakuten.access"):
            for i in range(count):
                access.log_http(("127.0.0.1", 5000), "POST", "/v2/models/m/infer", status, time.perf_counter(),
                                f"r{i}")
        return len(caplog.records)

    try:
        access.limit_refusal_lines(3)
        assert lines_for(503, 50) <= 6  # 3 a second; the loop may straddle a second
        assert lines_for(200, 50) == 50
        access.limit_refusal_lines(0)
        assert lines_for(503, 50) == 50
    finally:
        access.limit_refusal_lines(10)
