"""(b) Served: a real model server driven by the closed-loop client, adaptive batching on and off."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from benchmarks.serving.closed_loop import run_client, write_requests
from benchmarks.serving.common import log
from benchmarks.serving.cpu_profile import profile_server
from benchmarks.serving.servers import running_model_server
from loadtests.products import encode

SERVERS = (("batching_on", 32), ("batching_off", 1))  # (label, --max_batch_size)


def served(model_dir: Path, workdir: Path, products, concurrencies: list[int], payloads: list[str],
           duration: float, warmup: float, top_k: int, server_args: list[str], profile: bool) -> dict:
    """Every (payload, concurrency) cell against a server with batching on, then one with it off."""
    write_requests(workdir, {payload: [encode([p], top_k, payload) for p in products] for payload in payloads})
    cells = [(payload, c) for payload in payloads for c in concurrencies]
    client_timeout = len(cells) * (duration + warmup + 150) + 60
    result: dict = {"cells": {}, "profile": None}
    for label, batch_size in SERVERS:
        with running_model_server(str(model_dir), workdir / f"server-{label}.log", server_args,
                                  batch_size=batch_size) as (server, startup):
            log.info("served: %s (--max_batch_size %d) ready in %.1f s on %s", label, batch_size, startup, server.url)
            out = run_client(workdir, server.url, server.pid, cells, duration, warmup, top_k, client_timeout)
            for cell in out:
                log.info("  %-12s %-6s c=%-3d %7.1f req/s  p50 %6.1f  p95 %6.1f  p99 %6.1f ms  errors %d%s",
                         label, cell.payload, cell.concurrency, cell.throughput, cell.p50_ms, cell.p95_ms,
                         cell.p99_ms, cell.errors, f" ({cell.first_error[:100]})" if cell.first_error else "")
            result["cells"][label] = [asdict(c) for c in out]
            if profile and label == "batching_on":
                payload = "base64" if "base64" in payloads else payloads[0]
                result["profile"] = profile_server(server, workdir, duration, warmup, top_k, payload)
    return result
