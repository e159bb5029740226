"""Cost of inference capture on serving: throughput and p99 with capture off / 0.1 / 1.0, same run.

    python benchmarks/capture_cost.py --model-uri model-store/rakuten-classifier [--duration 15]
        [--rounds 2] [--rates 0,0.1,1] [--payload binary] [--concurrency 32] [--products 1000]

One real ``python -m model_server`` per (round, rate), capturing to a real S3 API server
(moto_server on 127.0.0.1, MinIO's stand-in) with ``--capture_uri s3://bench-captures/run<n>``
(files every 2 s, so that the writing falls inside the measured window),
driven by the serving benchmark's closed-loop client (its own process, one product per request).
Rounds alternate the order (off, 0.1, 1.0, then 1.0, 0.1, off ...) so that the machine's drift
falls on every rate alike; the table gives each rate's mean, and its ratio to capture off taken
round by round (each pair of servers ran minutes apart at most) as mean ± standard error.
``--products`` distinct products (each image new to a fresh server until it has seen them all),
so that image uploads are part of the cost, not only record files.

The S3 API server stands in for a MinIO on other machines: in a cluster its CPU is not the
predictor's. Here it shares the same cores, so by default it runs in the kernel's idle scheduling
class (``chrt --idle``: it gets the CPU serving leaves idle);
``--s3-priority normal`` makes it compete with the server as an equal. Its CPU seconds in each run
are in the table either way. ``--server-cpus 0 --client-cpus 1`` lays the machine out as a cluster
does: the server (and its capture writer process) on its own core, like a pod with a 1-CPU limit,
the client and the S3 API server on the other, like the callers and a MinIO on other nodes.
"""
from __future__ import annotations

import json
import shlex
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks.serving.closed_loop import run_client, write_requests
from benchmarks.serving.common import cpu_set_name, cpus, log, process_cpu_seconds
from benchmarks.serving.metrics import scrape
from benchmarks.serving.servers import running_model_server, s3_api_process
from benchmarks.serving.settings import CommonSettings, float_list, int_list, parse
from model_server.settings import Settings
from rakuten_common.options import AT_LEAST_ONE, option


@dataclass(frozen=True)
class CaptureCostSettings(CommonSettings):
    duration: float = option(15.0, type=float, help="seconds measured per server")
    warmup: float = option(3.0, type=float, help="seconds of load before measuring")
    rounds: int = option(2, type=AT_LEAST_ONE, help="passes over the rates, alternating their order")
    rates: tuple[float, ...] = option((0.0, 0.1, 1.0), type=float_list, metavar="LIST", shown="0,0.1,1",
                                      help="--capture_sample_rate values; 0: capture off (no --capture_uri)")
    payload: str = option("binary", choices=("binary", "base64"), help="request form")
    concurrency: int = option(32, type=AT_LEAST_ONE, help="closed-loop clients")
    capture_content: str = option("full", choices=("full", "hashes"), help="--capture_content of the servers")
    writer_cpu: float = option(Settings.capture_writer_cpu, type=float, metavar="CORES",
                               help="--capture_writer_cpu of the servers (the server's default)")
    products: int = option(1000, help="distinct products (images new to each server until all were sent)")
    s3_priority: str = option("idle", choices=("idle", "normal"),
                              help="CPU priority of the S3 API server (a stand-in for a MinIO on other machines): "
                                   "idle (SCHED_IDLE), or normal (competes with the server)")
    server_cpus: tuple[int, ...] = option((), type=int_list, metavar="LIST", shown="any",
                                          help="CPUs the servers (and their capture writer processes) may run on, "
                                               "e.g. 0: a pod's CPU")
    client_cpus: tuple[int, ...] = option((), type=int_list, metavar="LIST", shown="any",
                                          help="CPUs the client, the S3 API server and this script may run on, "
                                               "e.g. 1: the rest of the cluster")

    def resolved(self) -> CaptureCostSettings:
        """``--quick``: one short round, a smoke check."""
        return replace(self, duration=3.0, warmup=1.0, rounds=1, products=64) if self.quick else self


def in_process(products, s3_env: dict, content: str) -> dict:
    """What capturing one product costs, measured in this process against the S3 API server:
    the request path (sampling and enqueueing, best of 5 passes), and the CPU per record of what
    the writer process does (hashing, JSON, gzip, the image and records uploads; every image new),
    here run in this process's thread to time it."""
    import os
    import time

    import numpy as np

    from model_server.capture import Capture, CaptureFiles, CaptureWriter, Sampled, open_capture_store
    from model_server.codec import Products
    from model_server.settings import CaptureSettings

    os.environ.update(s3_env)
    uri = "s3://bench-captures/in-process"
    settings = CaptureSettings(uri, 1.0, content, 1 << 40, 1000, 3600.0)
    codes = np.array([[10, 2280, 40]], dtype=np.int64)
    probabilities = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    batches = [Products([p.designation], [p.description], [p.image], 3, [i]) for i, p in enumerate(products)]

    best = float("inf")
    for attempt in range(5):
        writer = CaptureWriter(CaptureFiles(open_capture_store(uri), content, f"request-path-{attempt}"),
                               settings, "capture-cost")  # not started: what is observed stays queued
        capture = Capture(writer, 1.0)
        started = time.perf_counter()
        for i, batch in enumerate(batches):
            capture.observe(f"r{i}", batch, codes, probabilities, "v1")
        best = min(best, (time.perf_counter() - started) / len(batches))
    files = CaptureFiles(open_capture_store(uri), content, "writer")
    items = [Sampled(f"r{i}", i, p.designation, p.description, p.image, [(10, 0.7), (2280, 0.2), (40, 0.1)], "v1",
                     time.time(), 0) for i, p in enumerate(products)]
    started = time.thread_time()
    for start in range(0, len(items), 100):
        outcome = files.write(items[start:start + 100])
        assert outcome.written == len(items[start:start + 100]), outcome.problems
    result = {"request_path_us": best * 1e6, "writer_cpu_ms": (time.thread_time() - started) / len(items) * 1e3}
    log.info("in process: request path %.1f us per product; writer %.2f ms CPU per record (%s content, "
             "every image new)", result["request_path_us"], result["writer_cpu_ms"], content)
    return result


def label(rate: float) -> str:
    return "off" if rate == 0 else f"{rate:g}"


def measure(settings: CaptureCostSettings, model_dir: Path, workdir: Path, s3_env: dict, s3_pid: int,
            rate: float, run: int) -> dict:
    """One server at ``rate``: the client's cell and the capture counters."""
    args = shlex.split(settings.server_args)
    if rate > 0:
        # Files every 2 s: the writing happens inside the measured window, not after it.
        args += [f"--capture_uri=s3://bench-captures/run{run}", f"--capture_sample_rate={rate}",
                 f"--capture_content={settings.capture_content}", f"--capture_writer_cpu={settings.writer_cpu}",
                 "--capture_flush_seconds=2"]
    with ExitStack() as stack:
        with cpus(settings.server_cpus):  # the server and its writer process inherit this thread's CPU set
            server, _ = stack.enter_context(running_model_server(
                str(model_dir), workdir / f"server-{run}-{label(rate)}.log", args, batch_size=32, env=s3_env))
        s3_cpu, writer_cpu = process_cpu_seconds(s3_pid), children_cpu_seconds(server.pid)  # past the start-up
        (cell,) = run_client(workdir, server.url, server.pid, [(settings.payload, settings.concurrency)],
                             settings.duration, settings.warmup, settings.top_k,
                             timeout=settings.duration + settings.warmup + 300)
        metrics = scrape(server.url)
        writer_cpu = children_cpu_seconds(server.pid) - writer_cpu
        s3_cpu = process_cpu_seconds(s3_pid) - s3_cpu
    counts = {outcome: metrics.total("rakuten_capture_records_total", outcome=outcome) or 0
              for outcome in ("written", "dropped", "failed")}
    budget_wait = metrics.total("rakuten_capture_writer_budget_wait_seconds_total") or 0.0
    log.info("  capture %-4s %7.1f req/s  p50 %6.1f  p99 %6.1f ms  server %.2f ms CPU/request  errors %d  "
             "records written %d dropped %d failed %d  writer process %.1f s CPU (waited %.1f s for its budget)  "
             "S3 server %.1f s CPU", label(rate),
             cell.throughput, cell.p50_ms, cell.p99_ms, cell.server_cpu_ms_per_request, cell.errors, counts["written"],
             counts["dropped"], counts["failed"], writer_cpu, budget_wait, s3_cpu)
    return {"rate": rate, "throughput": cell.throughput, "p50_ms": cell.p50_ms, "p99_ms": cell.p99_ms,
            "cpu_ms": cell.server_cpu_ms_per_request, "errors": cell.errors, "writer_cpu_s": writer_cpu,
            "s3_cpu_s": s3_cpu, "budget_wait_s": budget_wait, **counts}


def children_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``'s live child processes (the capture writer process) since they started
    (the table gives what they used while the client ran: the server waits for its writer to be ready)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    return sum(process_cpu_seconds(int(child)) for child in children)


def paired(results: list[dict], rate: float, base: float, key: str) -> str:
    """``key`` at ``rate`` over ``key`` at ``base``, each round's pair (run next to each other, so the
    machine's drift over minutes cancels): their mean ± its standard error (± 0 for one round)."""
    ratios = []
    for round_ in sorted({r["round"] for r in results}):
        (at_rate,) = (r[key] for r in results if r["round"] == round_ and r["rate"] == rate)
        (at_base,) = (r[key] for r in results if r["round"] == round_ and r["rate"] == base)
        ratios.append(at_rate / at_base)
    error = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0
    return f"{statistics.fmean(ratios):.3f} ± {error:.3f}"


def table(results: list[dict], rates: tuple[float, ...]) -> str:
    def mean(rate, key):
        return statistics.fmean(r[key] for r in results if r["rate"] == rate)

    base = rates[0]
    lines = ["| capture | req/s | p99 ms | server CPU ms/req | req/s vs off | p99 vs off | records written / dropped "
             "| writer process CPU s (budget waits s) | S3 server CPU s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rate in rates:
        runs = [r for r in results if r["rate"] == rate]
        per_run = " / ".join(f"{r['throughput']:.1f}" for r in runs)
        lines.append(f"| {label(rate)} | {mean(rate, 'throughput'):.1f} ({per_run}) | {mean(rate, 'p99_ms'):.1f} | "
                     f"{mean(rate, 'cpu_ms'):.2f} | {paired(results, rate, base, 'throughput')} | "
                     f"{paired(results, rate, base, 'p99_ms')} | "
                     f"{sum(r['written'] for r in runs):.0f} / {sum(r['dropped'] for r in runs):.0f} | "
                     f"{sum(r['writer_cpu_s'] for r in runs):.1f} ({sum(r.get('budget_wait_s', 0) for r in runs):.0f}) | "
                     f"{sum(r['s3_cpu_s'] for r in runs):.1f} |")
    return "\n".join(lines)


def layout(settings: CaptureCostSettings) -> str:
    """Where the processes ran, for the table's title."""
    if not (settings.server_cpus or settings.client_cpus):
        return "all processes on all CPUs"
    return (f"server on {cpu_set_name(settings.server_cpus)}, "
            f"client and S3 server on {cpu_set_name(settings.client_cpus)}")


def main(argv: list[str] | None = None) -> int:
    settings = parse(CaptureCostSettings, argv, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    from rakuten_common.logs import configure_logging

    configure_logging()
    import boto3

    from benchmarks.serving.cli import prepare_model, prepare_products
    from loadtests.products import encode

    workdir = settings.workdir or Path(tempfile.mkdtemp(prefix="rakuten-capture-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, _, model = prepare_model(settings.model_uri, workdir)
    products, described = prepare_products(settings.products, settings.data_dir)
    log.info("model %s, %d products (%.0f KB images), %s c=%d, %g s per server, %d rounds", model["version"],
             described["count"], described["mean_image_kb"], settings.payload, settings.concurrency,
             settings.duration, settings.rounds)
    write_requests(workdir, {settings.payload: [encode([p], settings.top_k, settings.payload) for p in products]})
    results = []
    with cpus(settings.client_cpus), s3_api_process(workdir / "moto.log", settings.s3_priority == "idle") as (s3_env, s3_pid):
        boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="bench-captures")
        costs = in_process(products[:300], s3_env, settings.capture_content)
        run = 0
        for round_ in range(settings.rounds):
            for rate in (settings.rates if round_ % 2 == 0 else tuple(reversed(settings.rates))):
                results.append({**measure(settings, model_dir, workdir, s3_env, s3_pid, rate, run), "round": round_})
                run += 1
    print(f"\nCapture cost, {settings.payload} c={settings.concurrency}, {settings.duration:g} s per server, "
          f"{settings.rounds} round(s), {described['count']} distinct products, writer process budget "
          f"{settings.writer_cpu:g} cores, S3 server at {settings.s3_priority} priority, "
          f"{layout(settings)}:\n")
    print(table(results, settings.rates), flush=True)
    print(f"\nIn process: the request path costs {costs['request_path_us']:.1f} us per captured product; the "
          f"writer process {costs['writer_cpu_ms']:.2f} ms of CPU per record ({settings.capture_content} content, "
          "every image new), on its CPU budget.", flush=True)
    if settings.json:
        settings.json.parent.mkdir(parents=True, exist_ok=True)
        settings.json.write_text(json.dumps({"model": model, "products": described, "in_process": costs,
                                             "runs": results}, indent=2) + "\n")
    errors = sum(r["errors"] for r in results)
    if errors:
        log.error("PROBLEM: %d requests failed", errors)
    log.info("logs in %s", workdir)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
