"""Overload benchmark of rakuten-classifier: what happens when more is offered than the server can do.

    python benchmarks/overload.py --model-uri model-store/rakuten-classifier [--quick] [--json FILE]
    python benchmarks/overload.py --url http://127.0.0.1:8080 [--server-pid PID]

1. Capacity: closed loop at c=32 (binary payloads, one real-size 500x500 JPEG product per
   request), as the serving benchmark measures it: req/s and p99 at capacity.
2. Open loop at 1x and 4x capacity (--loads) for --duration seconds each: Poisson arrivals
   sent whatever the server does, each request with a client deadline (--deadline, also sent in
   the --timeout-header). Per rate: goodput (2xx within the deadline), shed (503/429) and their
   latency, timeouts, errors, p50/p99 of admitted requests; the server's RSS peak, probe latency
   of /v2/health/ready and /metrics sampled throughout, the model work done for clients that had
   already given up (products through the model minus answers received in time, and any
   rakuten_*dropped*/*expired* counter the server exports), and how long the backlog took to drain.
3. The targets of issue 10 at 4x: goodput >= 90 % of capacity, p99 of admitted <= 2x p99 at
   capacity, RSS within --memory-limit-mb, probes p99 < 100 ms, no work for departed clients.

Client and server share the machine: unless pinned apart (--server-cpus 0 --client-cpus 1), the
senders' CPU is taken from the server, and more of it at 4x than at capacity. Figures move with
the machine's load (printed); compare runs made one after the other.
"""
from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.serving.closed_loop import run_client, write_requests
from benchmarks.serving.common import cpus, log, machine_info
from benchmarks.serving.metrics import Scrape, dropped_work, model_rows, scrape
from benchmarks.serving.open_loop import run_open_loop
from benchmarks.serving.settings import OverloadSettings, parse
from benchmarks.serving.watch import Watch
from loadtests.products import encode
from rakuten_common.logs import configure_logging
from rakuten_common.v2_client import infer_url

MB = 1024 * 1024


class Target:
    """The server under test: its URL, and its process when this benchmark started it."""

    def __init__(self, url: str, pid: int | None, server=None):
        self.url, self.pid, self.server = url, pid, server
        self.killed = False

    def alive(self) -> bool:
        return self.server is None or self.server.process.process.poll() is None

    def kill(self) -> None:
        """SIGKILL our own server: what the kernel does to a pod above its memory limit."""
        if self.server is not None and self.alive():
            log.warning("server RSS above the memory limit: killing it (as the OOM killer would in the pod)")
            self.server.process.process.kill()
            self.killed = True

    def watch(self, settings: OverloadSettings) -> Watch:
        return Watch(self.url, self.pid, settings.probe_interval, memory_limit=settings.memory_limit_mb * MB or None,
                     on_limit=self.kill).start()


def wait_idle(target: Target, timeout: float, poll: float = 0.5) -> float | None:
    """Seconds until the server has nothing in flight and the model has stopped running (None: not in time)."""
    started, last_rows = time.monotonic(), None
    while time.monotonic() - started < timeout and target.alive():
        metrics = scrape(target.url, timeout=5)
        if metrics is not None:
            rows = model_rows(metrics)
            if (metrics.total("rakuten_inflight_requests") or 0) == 0 and rows == last_rows:
                return time.monotonic() - started - poll
            last_rows = rows
        time.sleep(poll)
    return None


def measure_capacity(settings: OverloadSettings, target: Target, workdir: Path) -> dict:
    """Closed loop at ``capacity_concurrency``: req/s and latency at capacity, with probes and RSS."""
    log.info("capacity: closed loop, c=%d, %s payloads, %.0f s after %.0f s warm-up", settings.capacity_concurrency,
             settings.payload, settings.capacity_duration, settings.warmup)
    watch = target.watch(settings)
    (cell,) = run_client(workdir, target.url, target.pid or 0, [(settings.payload, settings.capacity_concurrency)],
                         settings.capacity_duration, settings.warmup, settings.top_k,
                         timeout=settings.capacity_duration + settings.warmup + 300)
    seen = watch.stop()
    log.info("  capacity %.1f req/s, p50 %.1f ms, p99 %.1f ms, %d errors", cell.throughput, cell.p50_ms,
             cell.p99_ms, cell.errors)
    return {"cell": asdict(cell), "watch": asdict(seen)}


def overload(settings: OverloadSettings, target: Target, workdir: Path, multiple: float, base_rps: float) -> dict:
    """Offer ``multiple`` x ``base_rps`` open loop; the client's summary and the server's side."""
    rate = multiple * base_rps
    log.info("%gx: offering %.0f req/s for %.0f s (deadline %.1f s, %d sender processes)", multiple, rate,
             settings.duration, settings.deadline, settings.clients)
    before = scrape(target.url)
    watch = target.watch(settings)
    summary = run_open_loop(workdir, infer_url(target.url), rate, settings.duration, settings.deadline,
                            clients=settings.clients, payload=settings.payload, top_k=settings.top_k,
                            seed=settings.seed + int(multiple * 100), timeout_header=settings.timeout_header,
                            label=f"{multiple:g}x")
    drain = wait_idle(target, settings.drain_timeout)
    seen = watch.stop()
    after = scrape(target.url) if target.alive() else None
    server: dict = {"drain_s": drain, "killed_above_memory_limit": target.killed,
                    "metrics_until": "idle" if drain is not None else "end of the watch"}
    if after is None and watch.last_metrics is not None:  # killed or unresponsive: its last answer
        after = Scrape.parse(watch.last_metrics.decode("utf-8", errors="replace"))
        server["metrics_until"] = "last /metrics answer before the end (a lower bound)"
    if before is not None and after is not None:
        ran = model_rows(after) - model_rows(before)
        server["model_rows"] = ran
        server["rows_for_late_or_departed_clients"] = max(0.0, ran - summary.ok)
        was = dropped_work(before)
        server["dropped_counters"] = {k: v - was.get(k, 0.0) for k, v in dropped_work(after).items()}
    log.info("  %gx: sent %.0f req/s, goodput %.1f req/s, shed %d, timeouts %d, errors %d, admitted p99 %.0f ms, "
             "RSS peak %s MB, drain %s s", multiple, summary.sent_rps, summary.goodput_rps, summary.shed,
             summary.timeouts, summary.errors, summary.admitted_p99_ms,
             f"{seen.rss_peak_bytes / MB:.0f}" if seen.rss_peak_bytes else "?", f"{drain:.1f}" if drain else "-")
    return {"multiple": multiple, "client": asdict(summary), "server": server, "watch": asdict(seen)}


def start_target(settings: OverloadSettings, workdir: Path, report: dict) -> Target:
    if settings.url:
        report["server"] = {"url": settings.url, "pid": settings.server_pid, "started_here": False}
        return Target(settings.url.rstrip("/"), settings.server_pid)
    from benchmarks.serving.cli import prepare_model
    from benchmarks.serving.servers import start_model_server

    model_dir, _, report["model"] = prepare_model(settings.model_uri, workdir)
    server_args = shlex.split(settings.server_args)
    with cpus(settings.server_cpus):  # the server process inherits this thread's CPU set
        server = start_model_server(str(model_dir), workdir / "server.log", server_args)
    ready = server.wait_ready()
    log.info("server ready in %.1f s on %s (log %s)", ready, server.url, workdir / "server.log")
    report["server"] = {"url": server.url, "pid": server.pid, "started_here": True, "args": server_args,
                        "log": str(workdir / "server.log")}
    return Target(server.url, server.pid, server)


def run(settings: OverloadSettings, workdir: Path, report: dict) -> None:
    from benchmarks.serving.cli import prepare_products

    products, report["products"] = prepare_products(settings.products, settings.data_dir, settings.seed)
    write_requests(workdir, {settings.payload: [encode([p], settings.top_k, settings.payload) for p in products]})
    target = start_target(settings, workdir, report)
    with cpus(settings.client_cpus):
        measure(settings, target, workdir, report)


def measure(settings: OverloadSettings, target: Target, workdir: Path, report: dict) -> None:
    """Capacity, then each offered load in turn; the server is stopped at the end."""
    try:
        report["capacity"] = measure_capacity(settings, target, workdir)
        measured = report["capacity"]["cell"]["throughput"]
        base = settings.capacity or measured
        if not base:
            raise RuntimeError(f"no request succeeded at capacity: {report['capacity']['cell']['first_error']}")
        report["base_rps"] = base
        report["loads"] = []
        for multiple in settings.loads:
            if not target.alive():
                log.warning("%gx skipped: the server is no longer running", multiple)
                report["loads"].append({"multiple": multiple, "skipped": "server not running"})
                continue
            report["loads"].append(overload(settings, target, workdir, multiple, base))
    finally:
        if target.server is not None:
            target.server.stop()


def main(argv: list[str] | None = None) -> int:
    from benchmarks.serving.cli import write_json
    from benchmarks.serving.overload_report import render, targets

    settings = parse(OverloadSettings, argv, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    configure_logging()
    workdir = settings.workdir or Path(tempfile.mkdtemp(prefix="rakuten-overload-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine_info(), "config": json.loads(json.dumps(asdict(settings), default=str))}
    ok = False
    try:
        run(settings, workdir, report)
        report["targets"] = targets(report, settings)
        ok = True
    finally:
        print(render(report, settings), flush=True)
        write_json(settings.json, report)
        if settings.workdir is None and ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log.info("logs kept in %s", workdir)
    missed = [t["target"] for t in report.get("targets", []) if t["met"] is False]
    if missed:
        log.warning("targets missed: %s", "; ".join(missed))
    return 1 if settings.check_targets and missed else 0
