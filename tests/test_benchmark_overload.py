"""The overload benchmark's bookkeeping: every request counted once, under the right outcome.

The server here is a stand-in: a tiny threaded HTTP server started by the test, which answers
each request as its body asks (a valid V2 answer, 503 with Retry-After, 429, a 500, a malformed
200, or an answer later than the client's deadline). The real model server cannot be told to
shed or stall on demand, and the point is the client's accounting, not the server. No timing
is asserted: the slow answer comes 4x after a deadline of 3 s, which fast answers never come near.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.serving.closed_loop import write_requests
from benchmarks.serving.metrics import Scrape, dropped_work, load_phases, model_rows
from benchmarks.serving.open_loop import (
    Record,
    arrival_times,
    drive,
    run_open_loop,
    summarise,
)
from benchmarks.serving.watch import Watch
from loadtests.products import Encoded

DEADLINE = 3.0
SLOW = 4 * DEADLINE
ANSWER = json.dumps({"outputs": [
    {"name": "prdtypecode", "datatype": "INT64", "shape": [1, 1], "data": [2583]},
    {"name": "probability", "datatype": "FP32", "shape": [1, 1], "data": [0.9]}]}).encode()
METRICS = b"""# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 7.5e+08
"""
# body -> (expected outcome, status)
KINDS = {b"ok": ("ok", 200), b"busy": ("shed", 503), b"limit": ("shed", 429), b"slow": ("timeout", 200),
         b"boom": ("error", 500), b"garbled": ("error", 200)}


class StandIn(BaseHTTPRequestHandler):
    """Answers POSTs as their body says; GET /v2/health/ready and /metrics like a healthy server."""

    def log_message(self, *args):  # keep the test output quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should on a slow answer

    def do_GET(self):
        self._send(200, METRICS if self.path == "/metrics" else b"{}")

    def do_POST(self):
        kind = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((kind, self.headers.get("timeout")))
        if kind == b"slow":
            time.sleep(SLOW)
        status = KINDS[kind][1]
        body = ANSWER if kind in (b"ok", b"slow") else b"not json" if kind == b"garbled" else b'{"error": "x"}'
        self._send(status, body, {"Retry-After": "1"} if kind == b"busy" else None)


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.daemon_threads = True
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def requests() -> list[Encoded]:
    return [Encoded(1, kind, {"Content-Type": "application/octet-stream"}) for kind in KINDS]


def expected_counts(n: int) -> dict[str, int]:
    counts = {"ok": 0, "shed": 0, "timeout": 0, "error": 0}
    kinds = list(KINDS.values())
    for i in range(n):
        counts[kinds[i % len(kinds)][0]] += 1
    return counts


def test_every_request_is_counted_once_under_its_outcome(stand_in):
    server, url = stand_in
    schedule = [i * 0.01 for i in range(36)]
    records, errors = asyncio.run(drive(url + "/infer", requests(), schedule, DEADLINE, 1, {"timeout": "3"}))
    assert len(records) == len(schedule) == len(server.seen)
    kinds = list(KINDS.values())
    assert [r.outcome for r in records] == [kinds[i % len(kinds)][0] for i in range(len(schedule))]
    summary = summarise(records, offered_rps=36.0, duration=0.36, error_kinds=errors)
    want = expected_counts(len(schedule))
    assert (summary.ok, summary.shed, summary.timeouts, summary.errors) == \
        (want["ok"], want["shed"], want["timeout"], want["error"])
    assert summary.shed_with_retry_after == want["shed"] // 2  # 503 carries it, 429 does not
    assert summary.goodput_rps == pytest.approx(want["ok"] / 0.36)
    assert summary.sent == 36 and sorted(r.scheduled for r in records) == schedule
    assert {r.status for r in records if r.outcome == "timeout"} == {0}
    assert sum(errors.values()) == want["error"] and any(k.startswith("HTTP 500") for k in errors)
    assert all(header == "3" for _, header in server.seen)  # the deadline travels with each request


def test_summary_counts_and_percentiles():
    records = ([Record(i / 100, 0.001, 0.010 * (i + 1), "ok", 200, False) for i in range(100)]
               + [Record(0.5, 0.0, 0.002, "shed", 503, True)] * 3
               + [Record(0.5, 0.0, 1.0, "timeout", 0, False)] * 2 + [Record(0.5, 0.0, 0.1, "error", 500, False)])
    s = summarise(records, offered_rps=50.0, duration=2.0)
    assert (s.sent, s.ok, s.shed, s.shed_with_retry_after, s.timeouts, s.errors) == (106, 100, 3, 3, 2, 1)
    assert s.sent_rps == 53.0 and s.goodput_rps == 50.0
    late = summarise([Record(0.5, 3.5, 0.01, "ok", 200, False)] * 8, offered_rps=4.0, duration=2.0)
    assert late.sent_rps == 2.0  # the last request left at 4 s: 8 requests in 4 s, not in 2
    assert s.admitted_p50_ms == pytest.approx(510.0) and s.admitted_p99_ms == pytest.approx(990.0)
    assert s.shed_p99_ms == pytest.approx(2.0)


def test_arrivals_are_a_seeded_poisson_schedule_within_the_window():
    times = arrival_times(200.0, 5.0, seed=3)
    assert times == arrival_times(200.0, 5.0, seed=3) and times != arrival_times(200.0, 5.0, seed=4)
    assert times == sorted(times) and times[0] > 0 and times[-1] < 5.0
    assert 800 < len(times) < 1200  # about rate x duration (fixed seed: deterministic)
    assert arrival_times(0.0, 5.0, seed=3) == []


@pytest.mark.process
def test_sender_processes_start_together_and_merge(stand_in, tmp_path):
    """The real path: ``python -m benchmarks.serving.open_loop`` processes, handshake, merged records."""
    server, url = stand_in
    write_requests(tmp_path, {"binary": requests()})
    summary = run_open_loop(tmp_path, url + "/infer", rate=40.0, duration=1.0, deadline=DEADLINE, clients=2,
                            payload="binary", top_k=1, seed=1, timeout_header="timeout")
    scheduled = sum(len(arrival_times(20.0, 1.0, seed=1000 + i)) for i in range(2))  # each sender's own schedule
    assert summary.sent == scheduled >= len(server.seen) > 0
    assert summary.ok + summary.shed + summary.timeouts + summary.errors == summary.sent
    assert summary.ok > 0 and summary.shed > 0 and summary.timeouts > 0 and summary.errors > 0


def test_watch_samples_probes_and_reads_rss_from_metrics(stand_in):
    _, url = stand_in
    watch = Watch(url, pid=None, interval=0.02, memory_limit=700 * 1024 * 1024)
    watch.start()
    while not watch.rss:
        time.sleep(0.01)
    seen = watch.stop()
    assert seen.probes["ready"].samples > 0 and seen.probes["metrics"].failures == 0
    assert seen.rss_peak_bytes == 7.5e8 and seen.rss_source == "process_resident_memory_bytes"
    assert seen.limit_hit_at_s is not None  # 750 MB > 700 MB
    assert watch.last_metrics == METRICS


def test_metrics_are_read_with_the_prometheus_parser():
    text = """# TYPE rakuten_batch_size histogram
rakuten_batch_size_bucket{le="1.0",model_name="rakuten-classifier"} 3.0
rakuten_batch_size_bucket{le="+Inf",model_name="rakuten-classifier"} 5.0
rakuten_batch_size_count{model_name="rakuten-classifier"} 5.0
rakuten_batch_size_sum{model_name="rakuten-classifier"} 42.0
# TYPE rakuten_model_load_seconds gauge
rakuten_model_load_seconds{model_name="rakuten-classifier",phase="fetch"} 0.5
rakuten_model_load_seconds{model_name="rakuten-classifier",phase="load"} 1.25
rakuten_model_load_seconds{model_name="rakuten-classifier",phase="warmup"} 2.0
rakuten_model_load_seconds{model_name="other",phase="fetch"} 9.0
# TYPE rakuten_expired_requests counter
rakuten_expired_requests_total{model_name="rakuten-classifier",stage="queue"} 4.0
rakuten_expired_requests_total{model_name="rakuten-classifier",stage="preprocess"} 1.0
rakuten_expired_requests_created{model_name="rakuten-classifier",stage="queue"} 1.7e9
"""
    scrape = Scrape.parse(text)
    assert model_rows(scrape) == 42.0
    assert load_phases(scrape) == {"fetch": 0.5, "load": 1.25, "warmup": 2.0}
    assert dropped_work(scrape) == {"rakuten_expired_requests_total": 5.0}
    assert dropped_work(Scrape.parse("# TYPE rakuten_requests counter\nrakuten_requests_total 3\n")) == {}


@pytest.mark.process
def test_cpu_pinning_applies_inside_the_block_and_to_processes_started_there():
    import os
    import subprocess
    import sys

    from benchmarks.serving.common import cpus
    from benchmarks.serving.settings import OverloadSettings, parse

    settings = parse(OverloadSettings, ["--server-cpus", "0", "--client-cpus", "0"], "")
    assert settings.server_cpus == (0,) and settings.client_cpus == (0,)
    everything = os.sched_getaffinity(0)
    with cpus(settings.server_cpus):
        assert os.sched_getaffinity(0) == {0}
        child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == "[0]"
    assert os.sched_getaffinity(0) == everything
    with cpus(()):
        assert os.sched_getaffinity(0) == everything
