"""What the server looks like from outside during a load: probe latency and resident memory.

Three sampling threads, as a kubelet and a Prometheus would see the pod: ``GET
/v2/health/ready`` and ``GET /metrics`` (a new connection each time, like kubelet probes), and
the server's RSS, from ``/proc/<pid>/status`` when the server runs here, else from its
``process_resident_memory_bytes`` metric. Above ``memory_limit`` the ``on_limit`` callback runs
once (the benchmark kills its own server, as the kernel's OOM killer would in the pod).
"""
from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.serving.common import percentile, process_memory_bytes
from benchmarks.serving.metrics import Scrape

PROBES = {"ready": "/v2/health/ready", "metrics": "/metrics"}


@dataclass
class ProbeStats:
    samples: int = 0
    failures: int = 0  # non-2xx or no answer within the probe timeout
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")


@dataclass
class WatchResult:
    seconds: float
    probes: dict[str, ProbeStats] = field(default_factory=dict)
    rss_start_bytes: float | None = None
    rss_peak_bytes: float | None = None
    rss_source: str = "none"
    limit_hit_at_s: float | None = None


def get(url: str, timeout: float) -> tuple[bool, bytes]:
    """``(answered 2xx, body)`` of ``GET url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300, response.read()
    except (OSError, urllib.error.URLError):
        return False, b""


class Watch:
    """Sample probes and RSS from ``start()`` to ``stop()``."""

    def __init__(self, base_url: str, pid: int | None = None, interval: float = 0.25, probe_timeout: float = 10.0,
                 memory_limit: int | None = None, on_limit: Callable[[], None] | None = None):
        self.base_url, self.pid, self.interval, self.probe_timeout = base_url.rstrip("/"), pid, interval, probe_timeout
        self.memory_limit, self.on_limit = memory_limit, on_limit
        self.latencies: dict[str, list[float]] = {name: [] for name in PROBES}
        self.failures: dict[str, int] = {name: 0 for name in PROBES}
        self.rss: list[float] = []
        self.last_metrics: bytes | None = None  # the last /metrics answer (for figures after a kill)
        self.limit_hit_at: float | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def start(self) -> Watch:
        self._started = time.monotonic()
        targets = [lambda name=name: self._probe(name) for name in PROBES]
        if self.pid:
            targets.append(self._proc_rss)
        self._threads = [threading.Thread(target=self._loop, args=(t,), daemon=True) for t in targets]
        for thread in self._threads:
            thread.start()
        return self

    def _loop(self, sample: Callable[[], None]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            sample()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _probe(self, name: str) -> None:
        started = time.monotonic()
        ok, body = get(self.base_url + PROBES[name], self.probe_timeout)
        self.latencies[name].append(time.monotonic() - started)
        if not ok:
            self.failures[name] += 1
            return
        if name == "metrics":
            self.last_metrics = body
        if name == "metrics" and not self.pid:
            rss = Scrape.parse(body.decode("utf-8", errors="replace")).total("process_resident_memory_bytes")
            if rss is not None:
                self._observe_rss(rss)

    def _proc_rss(self) -> None:
        rss = process_memory_bytes(self.pid).get("rss")
        if rss is not None:
            self._observe_rss(rss)

    def _observe_rss(self, rss: float) -> None:
        self.rss.append(rss)
        if self.memory_limit and rss > self.memory_limit and self.limit_hit_at is None:
            self.limit_hit_at = time.monotonic() - self._started
            if self.on_limit:
                self.on_limit()

    def stop(self) -> WatchResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.probe_timeout + 1)
        result = WatchResult(time.monotonic() - self._started, limit_hit_at_s=self.limit_hit_at,
                             rss_source="/proc" if self.pid else "process_resident_memory_bytes")
        for name, values in self.latencies.items():
            ordered = sorted(values)
            result.probes[name] = ProbeStats(len(values), self.failures[name], 1000 * percentile(ordered, 0.5),
                                             1000 * percentile(ordered, 0.99),
                                             1000 * ordered[-1] if ordered else float("nan"))
        if self.rss:
            result.rss_start_bytes, result.rss_peak_bytes = self.rss[0], max(self.rss)
        return result

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(self, *exc) -> None:
        if not self._stop.is_set():
            self.stop()
