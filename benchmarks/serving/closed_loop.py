"""The closed-loop client: ``concurrency`` aiohttp users, each sending its next request when the last answers.

It runs in its own process (``python -m benchmarks.serving.closed_loop SPEC``) so that it does
not share the server's GIL; ``run_client`` starts it and reads back one ``Cell`` per
(payload, concurrency) of the spec.
"""
from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.serving.common import (
    own_cpu_seconds,
    percentile,
    process_cpu_seconds,
    run_event_loop,
    run_module,
)
from benchmarks.serving.metrics import histogram_sum_count, scrape
from loadtests.products import Encoded, check_answer
from rakuten_common.v2_client import infer_url


@dataclass
class Cell:
    """The figures of one (payload, concurrency) measurement."""

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


async def run_cell(session, url: str, base_url: str, requests: list[Encoded], top_k: int, cell: Cell,
                   duration: float, warmup: float, server_pid: int) -> Cell:
    """Drive ``cell.concurrency`` users for ``warmup + duration`` seconds; measure the last ``duration``."""
    latencies: list[float] = []
    state = {"errors": 0, "first_error": None, "completed": 0}
    started = time.perf_counter()
    measure_from, end = started + warmup, started + warmup + duration
    marks: dict[str, tuple] = {}

    async def mark_start():
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        marks["start"] = (time.perf_counter(), process_cpu_seconds(server_pid), own_cpu_seconds())

    async def user(i: int):
        k = i
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            encoded = requests[k % len(requests)]
            k += cell.concurrency
            try:
                async with session.post(url, data=encoded.body, headers=encoded.headers) as response:
                    body = await response.read()
                    if response.status != 200:
                        problem = f"HTTP {response.status}: {body[:160]!r}"
                    else:
                        problem = check_answer(json.loads(body), encoded.rows, top_k)
            except Exception as exc:
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

    batch_before = histogram_sum_count(scrape(base_url), "rakuten_batch_size")
    await asyncio.gather(mark_start(), *(user(i) for i in range(cell.concurrency)))
    # users stop sending at ``end``; the window closes there (requests still in flight are not counted)
    wall0, server0, client0 = marks["start"]
    window = end - wall0
    server_cpu = process_cpu_seconds(server_pid) - server0
    client_cpu = own_cpu_seconds() - client0
    batch_after = histogram_sum_count(scrape(base_url), "rakuten_batch_size")
    latencies.sort()
    cell.requests, cell.errors, cell.first_error = len(latencies), state["errors"], state["first_error"]
    cell.throughput = len(latencies) / window
    cell.p50_ms, cell.p95_ms, cell.p99_ms = (1000 * percentile(latencies, q) for q in (0.5, 0.95, 0.99))
    # CPU includes the tail of requests in flight after ``end``: small against the window
    elapsed = time.perf_counter() - wall0
    cell.server_cpu_cores = server_cpu / elapsed
    cell.client_cpu_cores = client_cpu / elapsed
    if state["completed"]:
        cell.server_cpu_ms_per_request = 1000 * server_cpu / state["completed"]
    rows, calls = batch_after[0] - batch_before[0], batch_after[1] - batch_before[1]
    if calls > 0:
        cell.mean_model_batch = rows / calls
    return cell


async def _run_cells(spec: dict) -> list[dict]:
    import aiohttp

    with open(spec["requests_file"], "rb") as f:
        requests_by_payload = pickle.load(f)
    url = infer_url(spec["base_url"])
    results = []
    for payload, concurrency in spec["cells"]:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            cell = await run_cell(session, url, spec["base_url"], requests_by_payload[payload], spec["top_k"],
                                  Cell(payload, concurrency), spec["duration"], spec["warmup"], spec["server_pid"])
        results.append(asdict(cell))
    return results


def main(argv: list[str] | None = None) -> int:
    """Client process: run the cells of the spec file, write their results as JSON next to it."""
    spec_path = Path((argv or sys.argv[1:])[0])
    spec = json.loads(spec_path.read_text())
    results = run_event_loop(_run_cells(spec))
    Path(spec["results_file"]).write_text(json.dumps(results))
    return 0


def write_requests(workdir: Path, requests_by_payload: dict[str, list[Encoded]]) -> Path:
    """Pickle the pre-encoded request bodies once for the client processes."""
    path = workdir / "requests.pickle"
    with open(path, "wb") as f:
        pickle.dump(requests_by_payload, f)
    return path


def run_client(workdir: Path, base_url: str, server_pid: int, cells: list[tuple[str, int]], duration: float,
               warmup: float, top_k: int, timeout: float) -> list[Cell]:
    """Run the client process over ``cells`` (requests from ``write_requests``); its ``Cell`` results."""
    stamp = time.monotonic_ns()
    spec = {"base_url": base_url, "server_pid": server_pid, "cells": cells, "duration": duration, "warmup": warmup,
            "top_k": top_k, "requests_file": str(workdir / "requests.pickle"),
            "results_file": str(workdir / f"client-{stamp}.results.json")}
    spec_path = workdir / f"client-{stamp}.json"
    spec_path.write_text(json.dumps(spec))
    run_module("benchmarks.serving.closed_loop", str(spec_path), timeout=timeout)
    return [Cell(**r) for r in json.loads(Path(spec["results_file"]).read_text())]


if __name__ == "__main__":
    sys.exit(main())
