"""``--profile``: py-spy samples of the model server under a c=32 load.

CPU cores per thread group come from /proc (all threads, including TensorFlow's native pools
that py-spy cannot see); py-spy's raw (collapsed) stacks give the Python side by thread, by
activity and by leaf function, once for CPU samples and once for ``--gil`` samples.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.serving.closed_loop import run_client
from benchmarks.serving.common import log

CATEGORIES = [  # (label, patterns): a stack goes to the first label with a pattern in any of its frames
    ("model call (TensorFlow)", ("rakuten_common/runner.py", "tensorflow/")),
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
RATE_HZ = 100
CONCURRENCY = 32


def _group(thread_name: str) -> str:
    return re.sub(r"_\d+$", "_*", thread_name)


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
        thread = _group(frames[0].split(": ", 1)[-1]) if frames[0].startswith("thread") else "?"
        threads[thread] = threads.get(thread, 0) + n
        frames = frames[1:] if frames[0].startswith("thread") else frames
        label = next((name for name, patterns in CATEGORIES
                      if any(p in frame for frame in frames for p in patterns)), "other")
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
            name = _group(python_names[tid])
        elif comm == "python":
            name = "native threads named 'python' (TensorFlow inter-op pool, ...)"
        elif comm.startswith("tf_"):
            name = "native TensorFlow threads (tf_*)"
        else:
            name = f"native: {re.sub(r'[0-9_]+$', '', comm)}"
        groups[name] = groups.get(name, 0.0) + used
    return sorted(((k, v / seconds) for k, v in groups.items() if v > 0), key=lambda kv: -kv[1])


def python_thread_names(raw: Path) -> dict[int, str]:
    """``{tid: thread name}`` from py-spy's raw output (``thread (tid): name;...``)."""
    names = {}
    for line in raw.read_text(errors="replace").splitlines():
        match = re.match(r"thread \((\d+)\): ([^;]+);", line)
        if match:
            names[int(match.group(1))] = match.group(2)
    return names


def profile_server(server, workdir: Path, duration: float, warmup: float, top_k: int,
                   payload: str = "base64") -> dict:
    """py-spy ``record`` (CPU, then GIL) while the closed-loop client drives ``server`` at c=32."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        log.warning("profile: py-spy not found (pip install py-spy); skipped")
        return {"error": "py-spy not found"}
    out: dict = {"tool": "py-spy", "concurrency": CONCURRENCY, "payload": payload, "rate_hz": RATE_HZ}
    record_seconds = max(2, int(duration))
    for mode, flags in (("cpu", []), ("gil", ["--gil"])):
        raw = workdir / f"profile-{mode}.txt"
        cmd = [py_spy, "record", "--pid", str(server.pid), "--duration", str(record_seconds), "--rate", str(RATE_HZ),
               "--format", "raw", "--threads", "--output", str(raw), *flags]
        spy: dict = {}

        def record():
            time.sleep(warmup + 1)  # the client process needs ~1 s to start
            before, started = thread_cpu_seconds(server.pid), time.perf_counter()
            spy["done"] = subprocess.run(cmd, capture_output=True, text=True, timeout=record_seconds + 60)
            spy["window"] = (before, thread_cpu_seconds(server.pid), time.perf_counter() - started)

        thread = threading.Thread(target=record)
        thread.start()
        (cell,) = run_client(workdir, server.url, server.pid, [(payload, CONCURRENCY)], record_seconds + 2, warmup,
                             top_k, timeout=record_seconds + 300)
        thread.join()
        done = spy.get("done")
        if done is None or done.returncode != 0 or not raw.exists():
            message = (done.stderr if done else "")[-500:]
            log.warning("profile: py-spy failed (%s); is ptrace allowed here?", message.strip())
            out[mode] = {"error": message}
            continue
        out[mode] = summarise_collapsed(raw, record_seconds, RATE_HZ)
        out[mode].update(raw_file=str(raw), throughput=cell.throughput, server_cpu_cores=cell.server_cpu_cores)
        if mode == "cpu":
            before, after, seconds = spy["window"]
            out[mode]["cpu_cores_by_thread"] = cpu_by_thread_group(before, after, python_thread_names(raw), seconds)
    return out
