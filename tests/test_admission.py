"""Admission control, deadlines and departed clients: the bounds in isolation (pool, batcher,
admission counters), then on a real server process flooded beyond its bounds.

The in-process tests use a pure-numpy stand-in for the model (what is tested is the queueing);
the end-to-end ones run the real server and model. Speed is the overload benchmark's business:
these tests only check that refusals are fast 503s, that dropped work is counted and not done,
and that probes keep answering."""
from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from model_server.admission import (
    Admission,
    Deadline,
    DeadlineExceeded,
    Overloaded,
    Ticket,
    parse_timeout,
)
from model_server.auth import ApiKeys, RateLimiter
from model_server.batching import AdaptiveBatcher
from model_server.pool import FairPool
from model_server.request_gate import Gate, ServerState
from model_server.settings import Settings
from rakuten_common.processes import wait_until
from rakuten_common.v2_client import Product, infer_request, infer_url, post
from tests.support.servers import start_model_server

JSON = {"Content-Type": "application/json"}


# -- in process ---------------------------------------------------------------------------------------
def test_admission_counts_rows_and_bytes_and_refuses_beyond():
    admission = Admission(max_rows=4, max_bytes=1000, model_name="t")
    first = Ticket(admission, 600, Deadline.after(5))
    first.set_rows(3)
    second = Ticket(admission, 10, Deadline.after(5))
    with pytest.raises(Overloaded, match="3 products are queued, 2 more"):
        second.set_rows(2)
    assert admission.rows == 4  # its provisional row is held until the request is released
    second.release()
    assert (admission.rows, admission.bytes) == (3, 600)
    with pytest.raises(Overloaded, match="request bytes"):
        Ticket(admission, 500, Deadline.after(5))
    first.release()
    assert (admission.rows, admission.bytes) == (0, 0)


def test_a_request_larger_than_the_bound_is_admitted_alone():
    admission = Admission(max_rows=4, max_bytes=10**6, model_name="t")
    ticket = Ticket(admission, 10, Deadline.after(5))
    ticket.set_rows(8)  # the codec's own limit is what bounds one request
    ticket.release()
    assert admission.rows == 0


def test_client_timeout_header_only_shortens_the_deadline():
    assert parse_timeout(None, 30) == 30 and parse_timeout("2.5", 30) == 2.5 and parse_timeout("99", 30) == 30
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(ValueError):
            parse_timeout(bad, 30)


def test_pool_takes_turns_between_requests():
    """A one-unit request queued behind a 40-unit one finishes long before it (one thread)."""
    pool = FairPool(1)
    done = []

    def slow_unit(tag):
        time.sleep(0.01)
        done.append(tag)

    async def main():
        def big(job):
            job.add([lambda: slow_unit("big")] * 40)
        def small(job):
            slow_unit("small")
        await asyncio.gather(pool.run(big, Deadline.after(10)), pool.run(small, Deadline.after(10)))

    asyncio.run(main())
    pool.close()
    assert done.index("small") <= 2


def test_pool_skips_the_units_of_cancelled_and_expired_jobs():
    pool = FairPool(1)
    ran, wasted = [], []
    pool.on_wasted = wasted.append

    async def main():
        blocker = threading.Event()
        first = asyncio.ensure_future(pool.run(lambda job: blocker.wait(5), Deadline.after(10)))
        gone = asyncio.ensure_future(pool.run(lambda job: ran.append("gone"), Deadline.after(10)))
        late = asyncio.ensure_future(pool.run(lambda job: ran.append("late"), Deadline.after(0.05)))
        await asyncio.sleep(0.1)
        gone.cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the job
        blocker.set()
        await first
        with pytest.raises(DeadlineExceeded):
            await late
        await asyncio.sleep(0.05)

    asyncio.run(main())
    pool.close()
    assert ran == [] and wasted == []


def test_batcher_drops_rows_whose_deadline_passed_while_queued():
    calls = []

    def model(inputs):
        calls.append(list(inputs["ids"]))
        time.sleep(0.2)
        return inputs["ids"] * 2

    batcher = AdaptiveBatcher(model, max_batch_size=1 + 1, max_batch_time=0)

    async def main():
        busy = asyncio.ensure_future(batcher.submit({"ids": np.array([1, 2])}))
        await asyncio.sleep(0.02)
        late = asyncio.ensure_future(batcher.submit({"ids": np.array([3])}, Deadline.after(0.05)))
        fine = asyncio.ensure_future(batcher.submit({"ids": np.array([4])}, Deadline.after(5)))
        results = await asyncio.gather(busy, late, fine, return_exceptions=True)
        await batcher.close()
        return results

    busy, late, fine = asyncio.run(main())
    assert isinstance(late, DeadlineExceeded) and list(fine) == [8]
    assert [3] not in calls and all(3 not in c for c in calls)


def test_fast_refusal_answers_only_what_the_ordinary_path_would_refuse_with_503():
    """The refusal written by the HTTP protocol: only when admission is full, never in place of a
    401 (keys configured) or a 400/413 (malformed or too large), which the ordinary path answers."""
    settings = Settings(max_queued_rows=1)
    admission = Admission(1, 1 << 20, "rakuten-classifier")
    open_gate = Gate(None, settings, ServerState(lambda: None), admission, ApiKeys([], None), RateLimiter(0, 1))
    keyed_gate = Gate(None, settings, ServerState(lambda: None), admission, ApiKeys(["k"], None), RateLimiter(0, 1))
    small = [(b"content-length", b"100"), (b"x-request-id", b"r-1")]
    assert open_gate.fast_refusal(small, ("127.0.0.1", 5)) is None  # room: served the ordinary way
    admission.admit(0)
    answer = open_gate.fast_refusal(small, ("127.0.0.1", 5))
    assert (answer.status, answer.request_id, answer.close) == (503, "r-1", False)
    assert answer.headers == ((b"retry-after", b"1"),) and b"1 products are queued" in answer.body
    assert open_gate.fast_refusal([], None).close  # no announced length: the body is not worth receiving
    assert keyed_gate.fast_refusal(small, None) is None
    assert open_gate.fast_refusal([(b"content-length", b"12x")], None) is None
    assert open_gate.fast_refusal([(b"timeout", b"-1")], None) is None
    assert open_gate.fast_refusal([(b"content-length", str(settings.max_body_bytes + 1).encode())], None) is None


# -- a real server beyond its bounds ------------------------------------------------------------------
def png(side: int) -> bytes:
    """A small file that takes long to decode: a PNG of side x side pixels of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 100, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_server(published, s3, artifacts_dir, tmp_path_factory):
    """One preprocessing thread and room for 4 queued products, so that a few slow requests fill it."""
    server, url = start_model_server(
        published.uri, artifacts_dir / "model_server_admission.log",
        env={**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))},
        extra_args=["--preprocess_workers=1", "--max_queued_rows=4", "--drain_seconds=0",
                    "--max_request_pixels=100000000", "--max_image_bytes=20000000", "--max_body_bytes=40000000"])
    server.url = url
    yield server
    server.stop()


def metric(url: str, name: str, **labels) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    selector = ",".join(f'{k}="{v}"' for k, v in sorted({"model_name": "rakuten-classifier", **labels}.items()))
    found = re.search(r"^%s\{%s\} ([0-9.e+]+)$" % (re.escape(name), re.escape(selector)), text, re.M)
    return float(found.group(1)) if found else 0.0


def heavy_body(side: int = 3000) -> bytes:
    """One product whose PNG takes a while to decode (a legitimate but slow request)."""
    return json.dumps(infer_request([Product("Lampe", "", png(side))])).encode()


def test_beyond_the_bound_requests_get_a_fast_503_and_probes_keep_answering(small_server):
    body = heavy_body()
    before = metric(small_server.url, "rakuten_dropped_requests_total", reason="overloaded")
    probe_times = []

    def probe_loop(stop):
        while not stop.is_set():
            started = time.monotonic()
            with urllib.request.urlopen(f"{small_server.url}/v2/health/ready", timeout=5) as response:
                assert response.status == 200
            probe_times.append(time.monotonic() - started)
            time.sleep(0.05)

    stop = threading.Event()
    prober = threading.Thread(target=probe_loop, args=(stop,))
    prober.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: post(infer_url(small_server.url), body, JSON, timeout=60), range(16)))
    finally:
        stop.set()
        prober.join()
    statuses = [status for status, _ in answers]
    assert statuses.count(200) >= 4 and statuses.count(503) >= 4, statuses
    assert set(statuses) <= {200, 503}
    refused = next(answer for status, answer in answers if status == 503)
    assert "server busy" in refused["error"]
    assert metric(small_server.url, "rakuten_dropped_requests_total", reason="overloaded") - before >= 4
    assert probe_times and max(probe_times) < 2.0  # never behind the decoding (the benchmark measures it)


def test_retry_after_on_503(small_server):
    body = heavy_body()
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(_raw_post, small_server.url, body) for _ in range(12)]
        responses = [f.result() for f in futures]
    refused = [r for r in responses if r.startswith(b"HTTP/1.1 503")]
    assert refused and all(re.search(rb"(?i)\r\nretry-after: \d+\r\n", r) for r in refused)


@contextmanager
def admission_held_full(server):
    """Four slow one-product requests fill ``small_server``'s bound of 4 for the block; each is
    served (200) after it."""
    slow = heavy_body(6000)
    with ThreadPoolExecutor(4) as pool:
        blockers = [pool.submit(post, infer_url(server.url), slow, JSON, 60) for _ in range(4)]
        wait_until(lambda: metric(server.url, "rakuten_queued_rows") >= 4, 30, "admission full", interval=0.05)
        yield
        assert all(f.result()[0] == 200 for f in blockers)


def infer_head(request_id: str, length: int) -> bytes:
    """The head of a raw HTTP inference request with a JSON body of ``length`` bytes."""
    return (f"POST /v2/models/rakuten-classifier/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Request-ID: {request_id}\r\nContent-Length: {length}\r\n\r\n").encode()


def test_a_refusal_is_answered_before_the_body_and_keeps_a_small_request_s_connection(small_server):
    """While admission is full, a small request is refused by the HTTP protocol (503, Retry-After,
    its request id, one access line, counted) and its connection then serves the next request."""
    small = json.dumps(infer_request([Product("Lampe", "", png(32))])).encode()
    refused_before = metric(small_server.url, "rakuten_requests_total", status="503")
    host, port = small_server.url.removeprefix("http://").split(":")
    with admission_held_full(small_server):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(infer_head("refused-1", len(small)))  # headers only: the answer must not wait for the body
            first = _read_response(sock)
            sock.sendall(small + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            second = _read_response(sock)
    assert first.startswith(b"HTTP/1.1 503"), first
    assert re.search(rb"(?i)\r\nretry-after: 1\r\n", first) and re.search(rb"(?i)\r\nx-request-id: refused-1\r\n", first)
    assert b"connection: close" not in first.lower() and b"server busy" in first
    assert second.startswith(b"HTTP/1.1 200") and b'"live":true' in second, second
    assert metric(small_server.url, "rakuten_requests_total", status="503") - refused_before == 1
    access = [line for line in small_server.logs().splitlines() if "id=refused-1" in line]
    assert len(access) == 1 and '"POST /v2/models/rakuten-classifier/infer" 503' in access[0], access


def test_a_flood_of_refusals_is_counted_one_by_one_and_logged_at_most_ten_lines_a_second(small_server):
    """Under overload most requests are refusals: each is counted, but their access lines are
    rate-limited (writing one cost half the CPU of the refusal itself)."""
    small = json.dumps(infer_request([Product("Lampe", "", png(32))])).encode()
    flood = 100
    refused_before = metric(small_server.url, "rakuten_requests_total", status="503")
    host, port = small_server.url.removeprefix("http://").split(":")
    with admission_held_full(small_server):
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            for i in range(flood):
                sock.sendall(infer_head(f"flood-{i}", len(small)) + small)
                assert _read_response(sock).startswith(b"HTTP/1.1 503")
        seconds = time.monotonic() - started
    assert metric(small_server.url, "rakuten_requests_total", status="503") - refused_before == flood
    logged = [line for line in small_server.logs().splitlines() if re.search(r"id=flood-\d+$", line)]
    windows = int(seconds) + 2  # the seconds of the clock the flood touched
    assert 1 <= len(logged) <= min(10 * windows, flood - 1), (len(logged), seconds)
    assert all('"POST /v2/models/rakuten-classifier/infer" 503' in line for line in logged)


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while not (b"\r\n\r\n" in data and _complete(data)):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _raw_post(url: str, body: bytes, headers: dict | None = None, close_after_send: bool = False) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "x", "Content-Type": "application/json",
                                                 "Content-Length": str(len(body)), **(headers or {})}.items())
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST /v2/models/rakuten-classifier/infer HTTP/1.1\r\n{head}\r\n".encode() + body)
        if close_after_send:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, rest = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)content-length: (\d+)", head)
    return bool(found) and len(rest) >= int(found.group(1))


def test_expired_deadlines_drop_queued_work(small_server):
    """Requests with a short `timeout` queued behind slow ones: 504, counted, and never decoded."""
    slow = heavy_body(6000)  # 36 MP each: seconds of decoding on the one thread
    short = heavy_body(1000)
    dropped = metric(small_server.url, "rakuten_dropped_requests_total", reason="deadline")
    wasted = metric(small_server.url, "rakuten_wasted_rows_total", stage="preprocess")
    wait_until(lambda: metric(small_server.url, "rakuten_queued_rows") == 0, 30, "earlier tests' work done",
               interval=0.05)
    with ThreadPoolExecutor(4) as pool:
        blockers = [pool.submit(post, infer_url(small_server.url), slow, JSON, 60) for _ in range(2)]
        # Both blockers admitted first (a fixed sleep lost this race on a slow CI machine).
        wait_until(lambda: metric(small_server.url, "rakuten_queued_rows") >= 2, 30, "both blockers admitted",
                   interval=0.02)
        timed = [pool.submit(post, infer_url(small_server.url), short, {**JSON, "timeout": "0.1"}, 60)
                 for _ in range(2)]
        results = [f.result() for f in timed]
        assert all(f.result()[0] == 200 for f in blockers)
    assert [status for status, _ in results] == [504, 504], results
    assert "deadline of 0.1 s passed" in results[0][1]["error"]
    assert metric(small_server.url, "rakuten_dropped_requests_total", reason="deadline") - dropped == 2
    assert metric(small_server.url, "rakuten_wasted_rows_total", stage="preprocess") == wasted


def test_departed_clients_are_counted_as_499_and_their_work_skipped(small_server):
    slow = heavy_body(4000)
    before = {status: metric(small_server.url, "rakuten_requests_total", status=status) for status in ("200", "499")}
    gone = metric(small_server.url, "rakuten_dropped_requests_total", reason="client_disconnected")
    with ThreadPoolExecutor(3) as pool:
        blocker = pool.submit(post, infer_url(small_server.url), slow, JSON, 60)
        time.sleep(0.2)
        pool.submit(_raw_post, small_server.url, slow, None, True).result()  # sends, then hangs up
        mid_body = slow[: len(slow) // 2]
        host, port = small_server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:  # hangs up in the middle of its body
            sock.sendall(b"POST /v2/models/rakuten-classifier/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         + str(len(slow)).encode() + b"\r\n\r\n" + mid_body)
        assert blocker.result()[0] == 200
    # A departed client is counted when its handler notices, which can be after the blocker's answer.
    wait_until(lambda: metric(small_server.url, "rakuten_requests_total", status="499") - before["499"] >= 2,
               10, "two 499s counted", interval=0.1)
    assert metric(small_server.url, "rakuten_requests_total", status="499") - before["499"] == 2
    assert metric(small_server.url, "rakuten_requests_total", status="200") - before["200"] == 1
    assert metric(small_server.url, "rakuten_dropped_requests_total", reason="client_disconnected") - gone == 2


def test_heavy_units_leave_a_thread_for_ordinary_requests():
    """Two threads, two requests of heavy units (large images) queued: only one heavy unit runs at a
    time, and an ordinary request is served by the other thread meanwhile."""
    from model_server.pool import heavy

    pool = FairPool(2)
    release, started = threading.Event(), []

    def slow():
        started.append(1)
        release.wait(10)

    async def main():
        jobs = [asyncio.ensure_future(pool.run(lambda job: job.add([heavy(slow)] * 3), Deadline.after(30)))
                for _ in range(2)]
        await asyncio.sleep(0.2)
        light = await asyncio.wait_for(pool.run(lambda job: len(started), Deadline.after(30)), timeout=5)
        release.set()
        await asyncio.gather(*jobs)
        return light

    assert asyncio.run(main()) == 1  # the light request ran while one heavy unit held one thread
    pool.close()
    assert len(started) == 6
