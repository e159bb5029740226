"""Serving benchmark of rakuten-classifier: one script, one run, one table.

    python benchmarks/serving_benchmark.py --model-uri model-store/rakuten-classifier [--quick]
        [--duration 10] [--json results/bench.json] [--profile]

(a) Ceiling   in-process throughput of the same model (``ModelRunner``, the traced function the
              server calls) at batch sizes 1/8/32/64: model alone, then with the shared
              preprocessing (JPEG decode + resize + text cleaning) done serially in one thread,
              and spread over a pool of cpu_count threads, pipelined with the model calls
              (the next batch is decoded while the model runs).
(b) Served    V2 HTTP throughput and p50/p95/p99 latency of a real ``python -m model_server``
              process, closed-loop clients at concurrency 1/8/32 (aiohttp, in a separate process
              so that the client does not share the server's GIL), one product (text + 500x500
              JPEG) per request, images in base64 JSON and with the binary extension, adaptive
              batching on (--max_batch_size 32) and off (--max_batch_size 1). Server CPU per
              request and the mean model batch (from /metrics) are shown too.
(c) Cold start  process start -> /v2/health/ready with the model fetched from a real S3 API
              server (moto_server on 127.0.0.1) into an empty cache, and from a local folder;
              with the phases read from the server log.
(d) Ratios    served / ceiling (with preprocessing, best batch), batching on / off.
--profile     py-spy samples of the server under load at c=32 (batching on, base64): share of
              CPU per thread and per activity, and what holds the GIL.

Load generator and server share the machine: on a 2-core box the client takes part of the CPU
that the server would otherwise have. Only ratios measured in the same run are comparable.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported (ceiling)
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtests.products import PAYLOADS, check_answer, encode, load_products  # noqa: E402
from model_server.client import infer_url  # noqa: E402

S3_BUCKET = "bench-models"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except OSError:
        return 0, b""


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its finished children) from /proc, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "kserve", "numpy", "pillow", "aiohttp", "locust"):
        try:
            versions[dist.replace("-cpu", "")] = versions.get(dist.replace("-cpu", "")) or metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions.setdefault(dist.replace("-cpu", ""), None)
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(), "versions": versions,
            "date": datetime.now().isoformat(timespec="seconds")}


class Server:
    """One child process (model server or S3 API server) with its log in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.started_wall = time.time()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, url: str, timeout: float, interval: float = 0.05) -> float:
        """Seconds from process start until ``url`` answers 200."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            if http_get(url, timeout=1.0)[0] == 200:
                return time.perf_counter() - self.started
            time.sleep(interval)
        self.stop()
        raise TimeoutError(f"{url} not ready after {timeout:.0f} s:\n{self.logs()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def start_model_server(model_uri: str, log_path: Path, batch_size: int, extra: list[str],
                       env: dict[str, str] | None = None) -> tuple[Server, str]:
    port = free_port()
    server = Server([sys.executable, "-m", "model_server", f"--model_uri={model_uri}", f"--http_port={port}",
                     f"--grpc_port={free_port()}", f"--max_batch_size={batch_size}", *extra], log_path, env)
    return server, f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------------
# (a) ceiling, in process
# --------------------------------------------------------------------------------------------
def _timed_loop(step, duration: float, rows_per_step: int) -> float:
    """Call ``step`` for ``duration`` seconds (after two warm-up calls); return rows per second."""
    step()
    step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        step()
        done += rows_per_step
    return done / (time.perf_counter() - started)


def ceiling(bundle: Path, products, batch_sizes: list[int], duration: float) -> dict:
    import numpy as np

    from model_server.runner import ModelRunner
    from rakuten_common.bundle import load_bundle
    from rakuten_common.preprocessing import decode_image, product_text

    model, _, spec = load_bundle(bundle)
    runner = ModelRunner(model, spec)
    size = spec.image_size
    threads = os.cpu_count() or 2

    # Cost of one product's preprocessing in one thread.
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < min(2.0, duration):
        p = products[n % len(products)]
        decode_image(p.image, size)
        n += 1
    decode_ms = 1000 * (time.perf_counter() - started) / n
    started, m = time.perf_counter(), 0
    while time.perf_counter() - started < 0.5:
        p = products[m % len(products)]
        product_text(p.designation, p.description)
        m += 1
    text_ms = 1000 * (time.perf_counter() - started) / m

    def prepare(p):
        return product_text(p.designation, p.description), decode_image(p.image, size)

    def assemble(prepared):
        return {"text": np.array([t for t, _ in prepared], dtype=object), "image": np.stack([i for _, i in prepared])}

    rows = []
    with ThreadPoolExecutor(threads, thread_name_prefix="prep") as pool:
        for b in batch_sizes:
            batch = [products[i % len(products)] for i in range(b)]
            ready = assemble([prepare(p) for p in batch])
            runner.warm_up((b,))
            model_alone = _timed_loop(lambda: runner(ready), duration, b)

            cursor = [0]

            def next_products():
                start = cursor[0]
                cursor[0] += b
                return [products[(start + i) % len(products)] for i in range(b)]

            serial = _timed_loop(lambda: runner(assemble([prepare(p) for p in next_products()])), duration, b)

            pending = [[pool.submit(prepare, p) for p in next_products()]]

            def pipelined_step():
                current = [f.result() for f in pending[0]]
                pending[0] = [pool.submit(prepare, p) for p in next_products()]  # decoded while the model runs
                runner(assemble(current))

            pipelined = _timed_loop(pipelined_step, duration, b)
            for f in pending[0]:
                f.result()
            rows.append({"batch_size": b, "model_alone": model_alone, "with_preprocessing_serial": serial,
                         "with_preprocessing_threads": pipelined})
            log(f"  ceiling batch {b:>3}: model {model_alone:7.1f}/s, +prep serial {serial:7.1f}/s, "
                f"+prep {threads} threads {pipelined:7.1f}/s")
    best = {key: max(rows, key=lambda r: r[key]) for key in
            ("model_alone", "with_preprocessing_serial", "with_preprocessing_threads")}
    return {"image_size": size, "threads": threads, "decode_ms_per_image": decode_ms, "text_ms_per_product": text_ms,
            "rows": rows, "best": {k: {"samples_per_s": v[k], "batch_size": v["batch_size"]} for k, v in best.items()}}


# --------------------------------------------------------------------------------------------
# (b) served: the client runs in its own process
# --------------------------------------------------------------------------------------------
@dataclass
class Cell:
    payload: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    throughput: float = 0.0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu_cores: float = float("nan")
    server_cpu_ms_per_request: float = float("nan")
    client_cpu_cores: float = float("nan")
    mean_model_batch: float = float("nan")
    first_error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def error_ratio(self) -> float:
        total = self.requests + self.errors
        return self.errors / total if total else 1.0


def _metric_sum_count(text: str, name: str) -> tuple[float, float]:
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def _batch_metric(base_url: str) -> tuple[float, float]:
    status, body = http_get(f"{base_url}/metrics", timeout=5)
    return _metric_sum_count(body.decode(errors="replace"), "rakuten_batch_size") if status == 200 else (0.0, 0.0)


async def _run_cell(session, url: str, base_url: str, requests: list, top_k: int, cell: Cell,
                    duration: float, warmup: float, server_pid: int) -> Cell:
    import resource

    latencies: list[float] = []
    state = {"errors": 0, "first_error": None, "completed": 0}
    started = time.perf_counter()
    measure_from, end = started + warmup, started + warmup + duration
    marks: dict[str, tuple] = {}

    async def mark_start():
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        marks["start"] = (time.perf_counter(), process_cpu_seconds(server_pid), usage.ru_utime + usage.ru_stime)

    async def user(i: int):
        k = i
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            encoded = requests[k % len(requests)]
            k += cell.concurrency
            problem = None
            try:
                async with session.post(url, data=encoded.body, headers=encoded.headers) as response:
                    body = await response.read()
                    if response.status != 200:
                        problem = f"HTTP {response.status}: {body[:160]!r}"
                    else:
                        problem = check_answer(json.loads(body), encoded.rows, top_k)
            except Exception as exc:  # noqa: BLE001 - any transport error is an error of this request
                problem = f"{type(exc).__name__}: {exc}"[:200]
            done = time.perf_counter()
            if done >= measure_from:
                state["completed"] += 1  # for CPU per request (the CPU window includes the tail)
            if measure_from <= done <= end:
                if problem:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or problem
                else:
                    latencies.append(done - sent)

    batch_before = _batch_metric(base_url)
    await asyncio.gather(mark_start(), *(user(i) for i in range(cell.concurrency)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # users stop sending at ``end``; the window closes there (requests still in flight are not counted)
    wall0, server0, client0 = marks["start"]
    window = end - wall0
    server_cpu = process_cpu_seconds(server_pid) - server0
    client_cpu = usage.ru_utime + usage.ru_stime - client0
    batch_after = _batch_metric(base_url)
    latencies.sort()
    cell.requests, cell.errors, cell.first_error = len(latencies), state["errors"], state["first_error"]
    cell.throughput = len(latencies) / window
    cell.p50_ms, cell.p95_ms, cell.p99_ms = (1000 * percentile(latencies, q) for q in (0.5, 0.95, 0.99))
    # CPU includes the tail of requests in flight after ``end``: small against the window
    cell.server_cpu_cores = server_cpu / (time.perf_counter() - wall0)
    cell.client_cpu_cores = client_cpu / (time.perf_counter() - wall0)
    if state["completed"]:
        cell.server_cpu_ms_per_request = 1000 * server_cpu / state["completed"]
    rows, calls = batch_after[0] - batch_before[0], batch_after[1] - batch_before[1]
    if calls > 0:
        cell.mean_model_batch = rows / calls
    return cell


async def _client_main(spec: dict) -> list[dict]:
    import aiohttp

    with open(spec["requests_file"], "rb") as f:
        requests_by_payload = pickle.load(f)
    url = infer_url(spec["base_url"])
    results = []
    for payload, concurrency in spec["cells"]:
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            cell = await _run_cell(session, url, spec["base_url"], requests_by_payload[payload], spec["top_k"],
                                   Cell(payload, concurrency), spec["duration"], spec["warmup"], spec["server_pid"])
        results.append(asdict(cell))
        print(json.dumps({"progress": asdict(cell)}), file=sys.stderr, flush=True)
    return results


def client_worker(spec_path: str) -> int:
    """Entry point of the client process: runs the cells of the spec, prints their results as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        import uvloop

        results = uvloop.run(_client_main(spec))
    except ImportError:
        results = asyncio.run(_client_main(spec))
    print(json.dumps(results))
    return 0


def run_client(workdir: Path, base_url: str, server_pid: int, cells: list[tuple[str, int]], duration: float,
               warmup: float, top_k: int, timeout: float) -> list[Cell]:
    spec = {"base_url": base_url, "server_pid": server_pid, "cells": cells, "duration": duration, "warmup": warmup,
            "top_k": top_k, "requests_file": str(workdir / "requests.pickle")}
    spec_path = workdir / f"client-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--client-worker", str(spec_path)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"client failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [Cell(**{k: v for k, v in r.items()}) for r in json.loads(done.stdout.strip().splitlines()[-1])]


def served(model_dir: Path, workdir: Path, products, concurrencies: list[int], payloads: list[str],
           duration: float, warmup: float, top_k: int, server_args: list[str], profile: bool) -> dict:
    requests = {payload: [encode([p], top_k, payload) for p in products] for payload in payloads}
    with open(workdir / "requests.pickle", "wb") as f:
        pickle.dump(requests, f)
    cells = [(payload, c) for payload in payloads for c in concurrencies]
    client_timeout = len(cells) * (duration + warmup + 150) + 60
    result: dict = {"cells": {}, "profile": None}
    for label, batch_size in (("batching_on", 32), ("batching_off", 1)):
        server, base_url = start_model_server(str(model_dir), workdir / f"server-{label}.log", batch_size, server_args)
        try:
            startup = server.wait_ready(f"{base_url}/v2/health/ready", timeout=300)
            log(f"served: {label} (--max_batch_size {batch_size}) ready in {startup:.1f} s on {base_url}")
            out = run_client(workdir, base_url, server.pid, cells, duration, warmup, top_k, client_timeout)
            for cell in out:
                log(f"  {label:<12} {cell.payload:<6} c={cell.concurrency:<3} {cell.throughput:7.1f} req/s  "
                    f"p50 {cell.p50_ms:6.1f}  p95 {cell.p95_ms:6.1f}  p99 {cell.p99_ms:6.1f} ms  "
                    f"errors {cell.errors}" + (f" ({cell.first_error[:100]})" if cell.first_error else ""))
            result["cells"][label] = [asdict(c) for c in out]
            if profile and label == "batching_on":
                result["profile"] = profile_server(server, base_url, workdir, duration, warmup, top_k)
        finally:
            server.stop()
    return result


# --------------------------------------------------------------------------------------------
# --profile: py-spy on the server under load
# --------------------------------------------------------------------------------------------
CATEGORIES = [  # (label, patterns): a stack goes to the first label with a pattern in any of its frames
    ("model call (TensorFlow)", ("model_server/runner.py", "tensorflow/")),
    ("image decode + resize (Pillow)", ("decode_image", "PIL/")),
    ("text cleaning", ("product_text", "clean_text")),
    ("request validation + base64 (codec)", ("model_server/codec.py", "base64.py")),
    ("response building (model.postprocess)", ("postprocess (model_server/model.py",)),
    ("adaptive batcher", ("model_server/batching.py",)),
    ("logging (access log, kserve.trace)", ("logging/__init__.py",)),
    ("KServe timing middleware (getrusage)", ("timing_asgi/utils.py",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("kserve V2 (de)serialisation + dataplane", ("kserve/protocol/", "kserve/model.py", "orjson", "json/")),
    ("pydantic", ("pydantic",)),
    ("HTTP server (uvicorn/starlette/fastapi)", ("uvicorn/", "starlette/", "fastapi/", "h11/", "httptools")),
    ("asyncio event loop", ("asyncio/",)),
]


# Leaf frames of threads blocked in C (queue/lock/selector waits) that py-spy may not see as idle.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "select (selectors.py", "wait (threading.py",
               "Thread.run (threading.py", "_wait_for_tstate_lock (threading.py")


def summarise_collapsed(path: Path, seconds: float, rate: int) -> dict:
    """Per-thread-group, per-activity and top-leaf shares of py-spy's raw (collapsed) samples."""
    threads: dict[str, int] = {}
    categories: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if any(leaf in frames[-1] for leaf in IDLE_LEAVES):
            idle += n
            continue
        total += n
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        thread = re.sub(r"_\d+$", "_*", thread)
        threads[thread] = threads.get(thread, 0) + n
        frames = frames[1:] if frames[0].startswith("thread") else frames
        label = "other"
        for name, patterns in CATEGORIES:
            if any(p in frame for frame in frames for p in patterns):
                label = name
                break
        categories[label] = categories.get(label, 0) + n
        leaf = re.sub(r":\d+\)$", ")", frames[-1]) if frames else "?"
        leaves[leaf] = leaves.get(leaf, 0) + n

    def shares(d: dict[str, int], top: int | None = None) -> list[tuple[str, float]]:
        items = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [(k, v / total) for k, v in items] if total else []

    return {"samples": total, "idle_wait_samples_excluded": idle, "busy_threads_avg": total / (seconds * rate),
            "threads": shares(threads), "activities": shares(categories), "top_leaves": shares(leaves, 12)}


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """``{tid: (comm, utime + stime seconds)}`` for every thread of a process."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # thread ended
        out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / ticks)
    return out


def cpu_by_thread_group(before: dict, after: dict, python_names: dict[int, str], seconds: float) -> list:
    """CPU cores used per thread group over a window; threads without Python frames are native."""
    groups: dict[str, float] = {}
    for tid, (comm, cpu) in after.items():
        used = cpu - before.get(tid, (comm, 0.0))[1]
        if tid in python_names:
            name = re.sub(r"_\d+$", "_*", python_names[tid])
        elif comm == "python":
            name = "native threads named 'python' (TensorFlow inter-op pool, ...)"
        elif comm.startswith("tf_"):
            name = "native TensorFlow threads (tf_*)"
        else:
            name = f"native: {re.sub(r'[0-9_]+$', '', comm)}"
        groups[name] = groups.get(name, 0.0) + used
    return sorted(((k, v / seconds) for k, v in groups.items() if v > 0), key=lambda kv: -kv[1])


def profile_server(server: Server, base_url: str, workdir: Path, duration: float, warmup: float, top_k: int) -> dict:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        log("profile: py-spy not found (pip install py-spy); skipped")
        return {"error": "py-spy not found"}
    out: dict = {"tool": "py-spy", "concurrency": 32, "payload": "base64", "rate_hz": 100}
    record_seconds = max(2, int(duration))
    for mode, flags in (("cpu", []), ("gil", ["--gil"])):
        raw = workdir / f"profile-{mode}.txt"
        cmd = [py_spy, "record", "--pid", str(server.pid), "--duration", str(record_seconds), "--rate", "100",
               "--format", "raw", "--threads", "--output", str(raw), *flags]
        spy: dict = {}

        def record():
            time.sleep(warmup + 1)  # the client process needs ~1 s to start
            before, started = thread_cpu_seconds(server.pid), time.perf_counter()
            spy["done"] = subprocess.run(cmd, capture_output=True, text=True, timeout=record_seconds + 60)
            spy["window"] = (before, thread_cpu_seconds(server.pid), time.perf_counter() - started)

        thread = threading.Thread(target=record)
        thread.start()
        (cell,) = run_client(workdir, base_url, server.pid, [("base64", 32)], record_seconds + 2, warmup, top_k,
                             timeout=record_seconds + 300)
        thread.join()
        done = spy.get("done")
        if done is None or done.returncode != 0 or not raw.exists():
            message = (done.stderr if done else "")[-500:]
            log(f"profile: py-spy failed ({message.strip()}); is ptrace allowed here?")
            out[mode] = {"error": message}
            continue
        out[mode] = summarise_collapsed(raw, record_seconds, 100)
        out[mode].update(raw_file=str(raw), throughput=cell.throughput, server_cpu_cores=cell.server_cpu_cores)
        if mode == "cpu":
            names = {}
            for line in raw.read_text(errors="replace").splitlines():
                match = re.match(r"thread \((\d+)\): ([^;]+);", line)
                if match:
                    names[int(match.group(1))] = match.group(2)
            before, after, seconds = spy["window"]
            out[mode]["cpu_cores_by_thread"] = cpu_by_thread_group(before, after, names, seconds)
    return out


# --------------------------------------------------------------------------------------------
# (c) cold start
# --------------------------------------------------------------------------------------------
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(Fetching model from|Loaded version)")


def _log_phases(text: str, started_wall: float) -> dict:
    marks = {}
    for line in text.splitlines():
        match = _LOG_TIME.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            marks.setdefault(match.group(2), stamp - started_wall)
    phases = {}
    if "Fetching model from" in marks:
        phases["imports_s"] = marks["Fetching model from"]
        if "Loaded version" in marks:
            phases["fetch_load_warmup_s"] = marks["Loaded version"] - marks["Fetching model from"]
    return phases


def cold_start_once(model_uri: str, workdir: Path, label: str, env: dict[str, str], server_args: list[str],
                    products) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=workdir))
    server, base_url = start_model_server(model_uri, workdir / f"cold-{label}.log", 32, server_args,
                                          env={**env, "MODEL_CACHE_DIR": str(cache)})
    try:
        ready = server.wait_ready(f"{base_url}/v2/health/ready", timeout=300)
        encoded = encode([products[0]], 1, "base64")
        sent = time.perf_counter()
        request = urllib.request.Request(infer_url(base_url), data=encoded.body, headers=encoded.headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            ok = response.status == 200 and check_answer(json.loads(response.read()), 1, 1) is None
        first = time.perf_counter() - sent
        phases = _log_phases(server.logs(), server.started_wall)
        if "imports_s" in phases and "fetch_load_warmup_s" in phases:
            phases["server_start_s"] = ready - phases["imports_s"] - phases["fetch_load_warmup_s"]
        return {"source": label, "ready_s": ready, "first_inference_ms": 1000 * first, "first_inference_ok": ok, **phases}
    finally:
        server.stop()
        shutil.rmtree(cache, ignore_errors=True)


def cold_start(model_dir: Path, manifest, workdir: Path, runs: int, server_args: list[str], products) -> dict:
    from rakuten_common.artifacts import publish

    port = free_port()
    s3_url = f"http://127.0.0.1:{port}"
    moto = Server([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                  workdir / "moto_server.log")
    results = []
    try:
        moto.wait_ready(f"{s3_url}/moto-api/", timeout=60)
        env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_url}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            from rakuten_common.storage import s3_client

            s3_client().create_bucket(Bucket=S3_BUCKET)
            uri = f"s3://{S3_BUCKET}/rakuten-classifier"
            publish(model_dir, uri, manifest, progress=lambda *_: None)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
        for i in range(runs):
            results.append({**cold_start_once(uri, workdir, f"s3-{i}", env, server_args, products), "bundle_bytes": size})
            results[-1]["source"] = "s3 (moto, empty cache)"
            log(f"  cold start from S3: ready in {results[-1]['ready_s']:.2f} s")
    finally:
        moto.stop()
    local = cold_start_once(str(model_dir), workdir, "local", {}, server_args, products)
    local["source"] = "local folder"
    log(f"  cold start from a local folder: ready in {local['ready_s']:.2f} s")
    results.append(local)
    return {"runs": results}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list], title: str) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths)), line]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells[1:]]
    return "\n".join(out + [line, ""])


def fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}"


def problems(report: dict, max_error_ratio: float = 0.01) -> list[str]:
    """What makes the run unusable as a smoke check: errors in served cells, a failed first inference."""
    found = []
    for label, cells in report.get("served", {}).get("cells", {}).items():
        for c in cells:
            total = c["requests"] + c["errors"]
            if not total or c["errors"] / total > max_error_ratio:
                found.append(f"{label} {c['payload']} c={c['concurrency']}: {c['errors']} errors of {total} "
                             f"({c.get('first_error') or 'no request completed'})")
    for run in report.get("cold_start", {}).get("runs", []):
        if not run.get("first_inference_ok"):
            found.append(f"cold start from {run['source']}: first inference failed")
    return found


def json_safe(value):
    """NaN -> None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def ratios(report: dict, max_error_ratio: float = 0.01) -> dict:
    out = {"served_over_ceiling": [], "batching_on_over_off": []}
    served_cells = report.get("served", {}).get("cells", {})
    best_of = report.get("ceiling", {}).get("best", {})
    best = max([best_of.get(k, {}).get("samples_per_s") or 0 for k in
                ("with_preprocessing_serial", "with_preprocessing_threads")], default=0)

    def usable(c):
        return c and c["requests"] and (c["errors"] / (c["requests"] + c["errors"])) <= max_error_ratio

    for label, cells in served_cells.items():
        for c in cells:
            if best and usable(c):
                out["served_over_ceiling"].append({"server": label, "payload": c["payload"],
                                                   "concurrency": c["concurrency"], "ratio": c["throughput"] / best})
    on = {(c["payload"], c["concurrency"]): c for c in served_cells.get("batching_on", [])}
    off = {(c["payload"], c["concurrency"]): c for c in served_cells.get("batching_off", [])}
    for key in on:
        a, b = on[key], off.get(key)
        if usable(a) and usable(b):
            out["batching_on_over_off"].append({"payload": key[0], "concurrency": key[1],
                                                "throughput": a["throughput"] / b["throughput"],
                                                "p99": a["p99_ms"] / b["p99_ms"]})
    return out


def render(report: dict) -> str:
    m = report["machine"]
    parts = [f"rakuten-classifier serving benchmark - {m['date']}",
             f"machine: {m['cpu']}, {m['usable_cpus']}/{m['logical_cpus']} CPUs usable, python {m['python']}, "
             f"tensorflow {m['versions'].get('tensorflow')}, kserve {m['versions'].get('kserve')}, "
             f"load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}",
             f"model: {report['model']['uri']} (version {report['model']['version']}, image "
             f"{report['model'].get('image_size', '?')} px); products: {report['products']['source']}, "
             f"{report['products']['count']} x 500x500 JPEG, mean {report['products']['mean_image_kb']:.0f} KB; "
             f"{report['config']['duration_s']:g} s per cell", ""]
    c = report.get("ceiling")
    if c:
        parts.append(table(
            ["batch", "model alone /s", "+ prep serial /s", f"+ prep {c['threads']} threads /s"],
            [[r["batch_size"], fmt(r["model_alone"]), fmt(r["with_preprocessing_serial"]),
              fmt(r["with_preprocessing_threads"])] for r in c["rows"]],
            f"(a) Ceiling, in process (samples/s). One thread: decode+resize {c['decode_ms_per_image']:.2f} ms/image, "
            f"text {c['text_ms_per_product']:.3f} ms/product"))
    s = report.get("served")
    if s and s.get("cells"):
        rows = []
        for label, cells in s["cells"].items():
            for cell in cells:
                rows.append([label.replace("_", " "), cell["payload"], cell["concurrency"], fmt(cell["throughput"]),
                             fmt(cell["p50_ms"]), fmt(cell["p95_ms"]), fmt(cell["p99_ms"]),
                             f"{cell['errors']}/{cell['requests'] + cell['errors']}", fmt(cell["mean_model_batch"]),
                             fmt(cell["server_cpu_cores"], 2), fmt(cell["server_cpu_ms_per_request"]),
                             fmt(cell["client_cpu_cores"], 2)])
        parts.append(table(["server", "payload", "c", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                            "model batch", "srv cores", "srv CPU ms/req", "client cores"], rows,
                           "(b) Served, V2 HTTP, 1 product per request, closed loop"))
        errors = {cell["first_error"] for cells in s["cells"].values() for cell in cells if cell.get("first_error")}
        for e in sorted(errors):
            parts.append(f"    error seen: {e[:160]}")
        if errors:
            parts.append("")
    cs = report.get("cold_start")
    if cs:
        parts.append(table(["source", "ready s", "imports s", "fetch+load+warm-up s", "server start s",
                            "1st inference ms"],
                           [[r["source"], fmt(r["ready_s"], 2), fmt(r.get("imports_s"), 2),
                             fmt(r.get("fetch_load_warmup_s"), 2), fmt(r.get("server_start_s"), 2),
                             fmt(r["first_inference_ms"])] for r in cs["runs"]],
                           "(c) Cold start: process start -> /v2/health/ready"))
    r = report.get("ratios")
    if r:
        rows = [[x["server"].replace("_", " "), x["payload"], x["concurrency"], fmt(x["ratio"], 2)]
                for x in r["served_over_ceiling"]]
        if rows:
            parts.append(table(["server", "payload", "c", "served / ceiling"], rows,
                               "(d) Served throughput / in-process ceiling with preprocessing (best batch size, serial or threads)"))
        rows = [[x["payload"], x["concurrency"], fmt(x["throughput"], 2), fmt(x["p99"], 2)]
                for x in r["batching_on_over_off"]]
        if rows:
            parts.append(table(["payload", "c", "throughput on/off", "p99 on/off"], rows,
                               "(d) Adaptive batching on / off"))
    p = (s or {}).get("profile")
    if p:
        for mode, title in (("cpu", "where the server's CPU time goes"), ("gil", "what holds the GIL")):
            data = p.get(mode) or {}
            if "error" in data or not data:
                parts.append(f"Profile ({mode}): {data.get('error', 'none')}\n")
                continue
            if data.get("cpu_cores_by_thread"):
                parts.append(table(["thread group", "CPU cores"], [[k, f"{v:.2f}"] for k, v in data["cpu_cores_by_thread"]],
                                   f"Profile, c=32 base64 batching on ({data['throughput']:.0f} req/s under py-spy): "
                                   f"CPU per thread from /proc (all threads, Python or not)"))
            parts.append(table(["thread", "share"], [[k, f"{v:.0%}"] for k, v in data["threads"]],
                               f"  py-spy {mode} samples: {title} ({data['samples']} "
                               f"samples, {data['busy_threads_avg']:.2f} threads busy on average; "
                               f"{data['idle_wait_samples_excluded']} idle-wait samples left out; Python threads only), by thread"))
            parts.append(table(["activity", "share"], [[k, f"{v:.0%}"] for k, v in data["activities"]],
                               "  by activity (first matching category of the whole stack)"))
            parts.append(table(["leaf function", "share"], [[k[:90], f"{v:.0%}"] for k, v in data["top_leaves"]],
                               "  top leaf functions (self time)"))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    a = parser.add_argument
    a("--model-uri", default=os.environ.get("MODEL_URI", "model-store/rakuten-classifier"),
      help="model folder, prefix of versions or s3:// URI (as the server takes it)")
    a("--duration", type=float, default=None, help="seconds measured per cell (default 10, --quick 3)")
    a("--warmup", type=float, default=None, help="seconds of load before each measured cell (default 2, --quick 1)")
    a("--quick", action="store_true", help="short run (batch 1 and 32 only, 1 cold start): a smoke check")
    a("--json", type=Path, help="write the full results as JSON here")
    a("--profile", action="store_true", help="py-spy profile of the server under load at c=32")
    a("--concurrency", default="1,8,32", help="client concurrencies")
    a("--batch-sizes", default=None, help="ceiling batch sizes (default 1,8,32,64; --quick 1,32)")
    a("--payloads", default=",".join(PAYLOADS), help="base64,binary")
    a("--data-dir", default=None, help="take products from this dataset folder (default: generated)")
    a("--products", type=int, default=64, help="distinct products")
    a("--top-k", type=int, default=1)
    a("--cold-starts", type=int, default=None, help="cold starts from S3 (default 2, --quick 1)")
    a("--skip", default="", help="comma-separated parts to skip: ceiling,served,cold")
    a("--server-args", default="", help="extra model server arguments, e.g. '--max_batch_time_ms 2'")
    a("--workdir", type=Path, default=None, help="keep logs, profiles and caches here (default: a temp dir, removed)")
    a("--client-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.batch_sizes = [int(x) for x in (args.batch_sizes or ("1,32" if args.quick else "1,8,32,64")).split(",")]
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.payloads = [p for p in args.payloads.split(",") if p]
    args.cold_starts = args.cold_starts if args.cold_starts is not None else (1 if args.quick else 2)
    args.skip = {s for s in args.skip.split(",") if s}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client_worker:
        return client_worker(args.client_worker)
    from rakuten_common.artifacts import fetch

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rakuten-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server_args = shlex.split(args.server_args)
    report: dict = {"machine": machine_info(), "config": {
        "duration_s": args.duration, "warmup_s": args.warmup, "concurrency": args.concurrency,
        "batch_sizes": args.batch_sizes, "payloads": args.payloads, "top_k": args.top_k, "quick": args.quick,
        "server_args": server_args}}
    ok = False
    try:
        log(f"model: fetching {args.model_uri}")
        model_dir, manifest = fetch(args.model_uri, workdir / "model-cache", progress=lambda *_: None)
        from rakuten_common.bundle import PreprocessingSpec

        report["model"] = {"uri": args.model_uri, "version": manifest.version, "bundle": str(model_dir),
                           "image_size": PreprocessingSpec.load(model_dir).image_size}
        products = load_products(args.products, seed=0, data_dir=args.data_dir)
        report["products"] = {"source": args.data_dir or "generated (training_job.sample_data)",
                              "count": len(products),
                              "mean_image_kb": sum(len(p.image) for p in products) / len(products) / 1024}
        if "ceiling" not in args.skip:
            log("(a) ceiling, in process")
            report["ceiling"] = ceiling(model_dir, products, args.batch_sizes, args.duration)
        if "served" not in args.skip:
            log("(b) served")
            report["served"] = served(model_dir, workdir, products, args.concurrency, args.payloads, args.duration,
                                      args.warmup, args.top_k, server_args, args.profile)
        if "cold" not in args.skip:
            log("(c) cold start")
            report["cold_start"] = cold_start(model_dir, manifest, workdir, args.cold_starts, server_args, products)
        report["ratios"] = ratios(report)
        report["problems"] = problems(report)
        ok = True
    finally:
        print(render(report) if "model" in report else "no results")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(json_safe(report), indent=2, default=str) + "\n")
            log(f"results written to {args.json}")
        if args.workdir is None and ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")
    for problem in report.get("problems", []):
        log(f"PROBLEM: {problem}")
    return 1 if report.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
