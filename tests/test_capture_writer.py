"""The capture writer (model_server.capture) against the real S3 API server (moto_server) and a local
folder: records and images written and readable, images stored once, files never overwritten,
hashes-only mode, the byte bound dropping and counting, an unreachable endpoint. Against S3 the
batches go through the writer process the server uses (model_server.capture_process); against
a folder, through ``CaptureFiles`` in this process (the fast tier starts no process)."""
from __future__ import annotations

import gzip
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from model_server.capture import Capture, CaptureFiles, CaptureWriter, WriterProcess, open_capture_store
from model_server.codec import Products
from model_server.settings import CaptureSettings
from rakuten_common import captures
from rakuten_common.captures import parse_records_key, read_capture_file
from rakuten_common.processes import free_port, wait_until

MODEL = "capture-test"


def settings(uri: str, **changes) -> CaptureSettings:
    values = dict(uri=uri, sample_rate=1.0, content="full", queue_bytes=64 * 1024 * 1024, file_records=1000,
                  flush_seconds=600.0)
    values.update(changes)
    return CaptureSettings(**values)


def count(outcome: str, model: str = MODEL) -> float:
    return REGISTRY.get_sample_value("rakuten_capture_records_total", {"model_name": model, "outcome": outcome}) or 0


def products(n: int, image_every: int = 1) -> Products:
    return Products(designations=[f"Lampe {i}" for i in range(n)], descriptions=[f"<p>LED {i}</p>" for i in range(n)],
                    images=[b"\xff\xd8 image %d" % (i // image_every) for i in range(n)], top_k=2,
                    productids=[1000 + i for i in range(n)])


def answers(n: int):
    codes = np.array([[10, 2280]] * n, dtype=np.int64)
    probabilities = np.array([[0.75, 0.25]] * n, dtype=np.float32)
    return codes, probabilities


NAME = "pod-a-20261203T000000"


def capture(uri: str, model: str = MODEL, **changes) -> Capture:
    """A started capture: S3 through a writer process, a folder through ``CaptureFiles`` in process."""
    content = changes.get("content", "full")
    sink = (WriterProcess(uri, content, NAME) if uri.startswith("s3://")
            else CaptureFiles(open_capture_store(uri), content, NAME))
    writer = CaptureWriter(sink, settings(uri, **changes), model)
    writer.start()
    return Capture(writer, settings(uri, **changes).sample_rate)


def read_all(store) -> list:
    records = []
    for obj in store.list_objects("captures"):
        assert parse_records_key(obj.key), obj.key
        records += read_capture_file(store.get_bytes(obj.key), obj.key)
    return records


@pytest.fixture
def bucket(s3_env):
    name = f"captures-{time.monotonic_ns()}"
    s3_env.client().create_bucket(Bucket=name)
    return f"s3://{name}/prod"


def test_records_and_images_are_written_once_and_read_back(bucket):
    cap = capture(bucket)
    batch = products(6, image_every=2)  # 3 distinct images
    codes, probabilities = answers(6)
    cap.observe("req-1", batch, codes, probabilities, "v1")
    cap.observe("req-2", batch, codes, probabilities, "v1")
    assert cap.close(30)
    store = open_capture_store(bucket)
    records = read_all(store)
    assert len(records) == 12
    first = records[0]
    assert (first.request_id, first.productid, first.designation, first.description) == \
        ("req-1", 1000, "Lampe 0", "<p>LED 0</p>")
    assert first.top_k == ((10, 0.75), (2280, 0.25)) and first.model_version == "v1" and first.content == "full"
    assert first.text_sha256 == captures.text_sha256("Lampe 0", "<p>LED 0</p>")
    images = store.list_objects("images")
    assert sorted(o.key for o in images) == sorted({r.image_key for r in records}) and len(images) == 3
    assert store.get_bytes(first.image_key) == b"\xff\xd8 image 0"
    assert count("written") >= 12


def test_hashes_only_mode_keeps_text_and_images_out(bucket):
    cap = capture(bucket, model="capture-hashes", content="hashes")
    cap.observe("req-h", products(3), *answers(3), "v1")
    assert cap.close(30)
    store = open_capture_store(bucket)
    records = read_all(store)
    assert len(records) == 3 and all(r.content == "hashes" and r.designation is None and r.description is None
                                     for r in records)
    assert records[1].image_sha256 == captures.image_sha256(b"\xff\xd8 image 1")
    assert records[1].productid == 1001
    assert store.list_objects("images") == []
    raw = gzip.decompress(store.get_bytes(store.list_objects("captures")[0].key))
    assert b"Lampe" not in raw and b"image 1" not in raw


def test_a_file_is_never_overwritten(bucket):
    store = open_capture_store(bucket)
    taken = captures.records_key(captures.utc_now()[:10], NAME, 0)
    store.put_bytes(taken, b"someone else's file")
    cap = capture(bucket, model="capture-names")
    cap.observe("req-n", products(2), *answers(2), "v1")
    assert cap.close(30)
    assert store.get_bytes(taken) == b"someone else's file"
    keys = sorted(o.key for o in store.list_objects("captures"))
    assert [parse_records_key(k).seq for k in keys] == [0, 1]
    assert len(list(read_capture_file(store.get_bytes(keys[1])))) == 2


def test_files_are_flushed_on_size_and_on_age(tmp_path):
    cap = capture(str(tmp_path), model="capture-flush", file_records=5, flush_seconds=0.5)
    store = open_capture_store(str(tmp_path))
    cap.observe("req-size", products(12), *answers(12), "v1")  # two full files at once, 2 left waiting
    wait_until(lambda: len(store.list_objects("captures")) >= 3, 20, "files flushed on size and then age",
               interval=0.1)
    assert sorted(len(read_all_key(store, o.key)) for o in store.list_objects("captures")) == [2, 5, 5]
    assert cap.close(30)


def test_a_lone_product_is_written_on_age(tmp_path):
    """An idle writer wakes for the first product and writes it when it is --capture_flush_seconds old."""
    cap = capture(str(tmp_path), model="capture-age", flush_seconds=0.3)
    store = open_capture_store(str(tmp_path))
    cap.observe("req-age", products(1), *answers(1), "v1")
    wait_until(lambda: len(store.list_objects("captures")) == 1, 20, "one file flushed on age", interval=0.1)
    assert [r.request_id for r in read_all(store)] == ["req-age"]
    assert cap.close(30)


def read_all_key(store, key):
    return list(read_capture_file(store.get_bytes(key), key))


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path):
    size = len("Lampe 0") + len("<p>LED 0</p>") + len(b"\xff\xd8 image 0") + 400
    cap = capture(str(tmp_path), model="capture-full", queue_bytes=3 * size + 10)
    cap.observe("req-full", products(10), *answers(10), "v1")  # the writer waits for 1000 records or 600 s
    assert count("dropped", "capture-full") == 7
    assert cap.close(30)
    assert count("written", "capture-full") == 3
    assert len(read_all(open_capture_store(str(tmp_path)))) == 3


@pytest.mark.process  # an s3:// capture starts the writer process
def test_an_unreachable_store_fails_fast_and_counts(monkeypatch, caplog):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    cap = capture("s3://nowhere/captures", model="capture-down", file_records=2)
    cap.observe("req-down", products(4), *answers(4), "v1")
    assert cap.close(60)  # two attempts with short timeouts per batch: never minutes
    assert count("failed", "capture-down") == 4 and count("written", "capture-down") == 0
    assert REGISTRY.get_sample_value("rakuten_capture_files_total",
                                     {"model_name": "capture-down", "outcome": "failed"}) >= 1
    assert "records not written to s3://nowhere/captures" in caplog.text


def test_sampling_takes_about_the_rate(tmp_path):
    cap = capture(str(tmp_path), model="capture-rate", sample_rate=0.25)
    for i in range(40):
        cap.observe(f"req-{i}", products(10), *answers(10), "v1")
    assert cap.close(30)
    assert 50 <= count("written", "capture-rate") <= 150  # 100 expected of 400


def test_the_writer_process_is_ready_at_start_at_a_lower_priority_and_restarted_when_it_dies(bucket, caplog):
    """The child that does the writing is ready (libraries imported, store open) when ``start``
    returns, every thread of it below serving's priority (niceness 10, the normal class: it must get
    its budget on a busy pod); killed, its batch is counted as failed with a WARNING and the next
    batch gets a new child."""
    import os
    import signal

    from model_server.capture_process import WRITER_NICENESS

    sink = WriterProcess(bucket, "full", NAME)
    sink.start()
    try:
        first = sink._process.pid
        assert sink._ready  # said READY within start()
        assert sink.write(sampled(3)).written == 3  # the child has set its priority before its first batch
        threads = [int(tid) for tid in os.listdir(f"/proc/{first}/task")]
        assert len(threads) > 1  # the S3 client's and the libraries' threads too
        assert {os.sched_getscheduler(tid) for tid in threads} == {os.SCHED_OTHER}
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in threads} == {WRITER_NICENESS} == {10}
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not sink._process.is_alive(), 20, "the killed writer to end", interval=0.1)
        lost = sink.write(sampled(2))  # the dead child is noticed and replaced before the batch is sent
        assert lost.written == 2 and sink._process.pid != first
        second = sink._process.pid
        os.kill(second, signal.SIGSTOP)  # a child that hangs: the backstop timeout kills it
        sink.timeout = 1.0
        hung = sink.write(sampled(4))
        assert hung.failed == 4 and hung.files_failed == 1 and "writer process failed" in hung.problems[0]
        sink.timeout = 120.0  # a new child imports boto3 before it answers
        assert sink.write(sampled(1)).written == 1 and sink._process.pid not in (first, second)
    finally:
        sink.close()
    store = open_capture_store(bucket)
    assert len(read_all(store)) == 3 + 2 + 1
    assert len({parse_records_key(o.key).seq for o in store.list_objects("captures")}) == 3


@pytest.mark.process  # starts two stand-in processes
def test_a_writer_using_cpu_is_slow_not_stuck():
    """The backstop kills a child that holds a batch without using any CPU (stopped, deadlocked),
    never one that is only slow (starved in the idle class on a busy machine, it still uses some).
    Stand-ins for the child, whose answer comes after 4 s against a 1 s backstop: a busy process,
    and a sleeping one."""
    import multiprocessing
    import subprocess
    import sys
    import threading

    for program, stuck in (("while True: pass", False), ("import time; time.sleep(60)", True)):
        child = subprocess.Popen([sys.executable, "-c", program])
        time.sleep(0.5)  # past the interpreter's start, which uses CPU
        sink = WriterProcess("unused", "full", NAME, timeout=1.0)
        ours, theirs = multiprocessing.Pipe()
        sink._process, sink._conn = child, ours
        answer = threading.Timer(4.0, theirs.send, args=("answered",))
        answer.daemon = True
        answer.start()
        try:
            if stuck:
                with pytest.raises(TimeoutError, match="no CPU used in 1 s"):
                    sink._wait_for_answer()
                assert answer.is_alive()  # it gave up before the answer came
            else:
                sink._wait_for_answer()
                assert ours.recv() == "answered"
        finally:
            answer.cancel()
            child.kill()
            child.wait()


def sampled(n: int, first: int = 0) -> list:
    from model_server.capture import Sampled

    return [Sampled(f"req-{i}", 1000 + i, f"Lampe {i}", "", b"\xff\xd8 image %d" % i, [(10, 0.9)], "v1",
                    time.time(), 100) for i in range(first, first + n)]


class FakeTime:
    """A clock, a CPU time and an ``unbound`` event whose ``wait`` advances the clock (no real waiting)."""

    def __init__(self):
        self.now, self.cpu, self.set = 100.0, 10.0, False

    def clock(self):
        return self.now

    def cpu_time(self):
        return self.cpu

    def is_set(self):
        return self.set

    def wait(self, seconds):
        self.now += seconds
        return self.set


def test_the_cpu_throttle_waits_while_the_writer_is_ahead_of_its_budget():
    """``CpuThrottle``: CPU used beyond ``cores`` a second (after a ``burst``) is paid for by waiting,
    pauses do not bank more than the burst, and once unbound (the shutdown drain) it never waits."""
    from model_server.capture_process import CpuThrottle

    t = FakeTime()
    throttle = CpuThrottle(0.1, unbound=t, burst=0.05, clock=t.clock, cpu_time=t.cpu_time)
    t.cpu += 0.04
    assert throttle.pace() == 0  # within the burst
    t.cpu += 0.21  # 0.2 s of CPU beyond it: 2 s of waiting at 0.1 core
    assert throttle.pace() == pytest.approx(2.0)
    t.now += 3600  # an idle hour banks the burst, not 360 s of CPU
    t.cpu += 0.15
    assert throttle.pace() == pytest.approx(1.0)
    assert throttle.waited == pytest.approx(3.0)
    t.set = True
    t.cpu += 5.0
    assert throttle.pace() == 0 and not throttle.bounded
    assert not CpuThrottle(1.0, clock=t.clock, cpu_time=t.cpu_time).bounded  # one core: the writer's one thread


class SteppingClock:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class SlowStore:
    """A store whose ``put_bytes`` reports each key in order and fails from the ``fail_at``-th on."""

    def __init__(self, store, fail_at: int | None = None):
        self.store, self.fail_at, self.keys = store, fail_at, []
        self.uri = store.uri

    def put_bytes(self, key, data, overwrite=True):
        from rakuten_common.storage import StorageError

        if self.fail_at is not None and len(self.keys) >= self.fail_at:
            raise StorageError("the store went away")
        self.store.put_bytes(key, data, overwrite)
        self.keys.append(key)


def test_a_batch_slower_than_a_flush_period_is_stored_as_a_file_each_period(tmp_path):
    """A writer held back (by its budget, or a slow store) stores the records whose images are
    stored every ``file_seconds`` of writing, not once at the end of a long batch: each file comes
    after its records' images, and a failure loses only the records not yet in a file."""
    store = SlowStore(open_capture_store(str(tmp_path)))
    files = CaptureFiles(store, "full", NAME, file_seconds=2.5, clock=SteppingClock(1.0))
    outcome = files.write(sampled(7))
    assert (outcome.written, outcome.failed, outcome.files_written) == (7, 0, 3)
    sizes = [len(list(read_capture_file(store.store.get_bytes(k), k))) for k in store.keys if k.startswith("captures/")]
    assert sizes == [3, 3, 1]
    for position, key in enumerate(store.keys):  # every record's image is stored before its file
        if key.startswith("captures/"):
            records = read_capture_file(store.store.get_bytes(key), key)
            assert all(captures.image_key(r.image_sha256) in store.keys[:position] for r in records)

    pieces = []  # with ``progress``: each file but the last reported as it is stored
    files = CaptureFiles(SlowStore(open_capture_store(str(tmp_path / "progress"))), "full", NAME, file_seconds=2.5,
                         clock=SteppingClock(1.0))
    outcome = files.write(sampled(7, first=20), pieces.append)
    assert [(p.written, p.files_written, p.final) for p in pieces] == [(3, 1, False), (3, 1, False)]
    assert (outcome.written, outcome.files_written, outcome.final) == (1, 1, True)

    failing = SlowStore(open_capture_store(str(tmp_path / "failing")), fail_at=5)  # 3 images, a file, 1 image
    files = CaptureFiles(failing, "full", NAME, file_seconds=2.5, clock=SteppingClock(1.0))
    outcome = files.write(sampled(7, first=10))
    assert (outcome.written, outcome.failed, outcome.files_written, outcome.files_failed) == (3, 4, 1, 1)
    assert "4 records not written" in outcome.problems[0]
    assert len(read_all(failing.store)) == 3


@pytest.mark.process  # starts the writer process
def test_the_writer_process_reports_each_file_of_a_long_batch_as_it_is_stored(bucket):
    """The server counts a long batch's files as the child stores them (a writer held back by its
    budget would otherwise show nothing written for minutes): here a file after every record."""
    sink = WriterProcess(bucket, "full", NAME, file_seconds=1e-9)
    sink.start()
    pieces = []
    try:
        outcome = sink.write(sampled(4), pieces.append)
    finally:
        sink.close()
    assert [(p.written, p.final) for p in pieces] == [(1, False)] * 3 and (outcome.written, outcome.final) == (1, True)
    assert len(read_all(open_capture_store(bucket))) == 4


@pytest.mark.process  # starts the writer process
def test_the_drain_never_waits_on_a_writer_killed_while_it_waited_on_its_budget(bucket):
    """A writer killed in its budget wait (the OOM killer, a signal to the process group) must not
    hang the server's shutdown: ``drain()`` returns at once and the batch is counted as failed. (With
    a ``multiprocessing.Event`` as the drain signal, ``set()`` waited forever for the dead sleeper.)"""
    import os
    import signal
    import threading

    sink = WriterProcess(bucket, "full", NAME, cores=0.01)
    sink.start()
    outcomes = []
    writing = threading.Thread(target=lambda: outcomes.append(sink.write(sampled(200))), daemon=True)
    writing.start()
    try:
        # 200 uploads are ~0.2 s of CPU, 20 s at 0.01 cores: past its 50 ms burst, the child waits.
        wait_until(lambda: bool(open_capture_store(bucket).list_objects("images")), 30, "the first image upload",
                   interval=0.1)
        time.sleep(1.0)
        os.kill(sink._process.pid, signal.SIGKILL)
        draining = threading.Thread(target=sink.drain, daemon=True)
        draining.start()
        draining.join(10)
        assert not draining.is_alive(), "drain() hung on the killed writer"
        writing.join(30)
        assert not writing.is_alive() and outcomes[0].failed == 200 - outcomes[0].written
        assert sink.write(sampled(3, 500)).written == 3  # a new child, started unbound
    finally:
        sink.close()


@pytest.mark.process  # starts the writer process
def test_the_writer_process_start_up_is_not_paid_from_its_budget(bucket):
    """The child's imports and store (a third of a CPU second) come before its budget starts: at the
    smallest budget, 0.01 cores, its first record is written without a budget wait (counting them
    would cost tens of seconds of waiting)."""
    sink = WriterProcess(bucket, "full", NAME, cores=0.01)
    sink.start()
    try:
        outcome = sink.write(sampled(1))
        assert outcome.written == 1 and outcome.budget_wait_seconds == 0
    finally:
        sink.close()


@pytest.mark.process  # starts the writer process
def test_the_writer_process_keeps_to_its_cpu_budget_until_the_drain(bucket):
    """A writer process at 0.1 cores waits before its uploads (and says how long: the server counts
    it in rakuten_capture_writer_budget_wait_seconds_total); ``drain()`` (the shutdown) lifts the budget."""
    sink = WriterProcess(bucket, "full", NAME, cores=0.1)
    sink.start()
    try:
        first = sink.write(sampled(60))  # ~1 ms of CPU a PUT: past the 50 ms burst within this batch or the next
        second = sink.write(sampled(60, 60))
        assert first.written == second.written == 60 and second.budget_wait_seconds > 0
        sink.drain()
        outcome = sink.write(sampled(60, 120))
        assert outcome.written == 60 and outcome.budget_wait_seconds == 0
    finally:
        sink.close()
    assert len(read_all(open_capture_store(bucket))) == 180
