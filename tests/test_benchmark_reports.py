"""The benchmarks' verdicts and text reports, from hand-made results (no server, no timing)."""
from __future__ import annotations

from dataclasses import asdict

from benchmarks.serving.closed_loop import Cell
from benchmarks.serving.open_loop import LoadSummary
from benchmarks.serving.overload_report import render as render_overload
from benchmarks.serving.overload_report import targets
from benchmarks.serving.report import latency_plot, problems, ratios
from benchmarks.serving.report import render as render_serving
from benchmarks.serving.settings import OverloadSettings, ServingSettings, parse
from benchmarks.serving.watch import ProbeStats, WatchResult

MB = 1024 * 1024
MACHINE = {"date": "2026-11-29T12:00:00", "cpu": "test CPU", "usable_cpus": 2, "logical_cpus": 2, "python": "3.11",
           "versions": {"tensorflow": "2.21", "kserve": "0.21"}, "load_average_at_start": (1.0, 1.0, 1.0)}


def watch(peak_mb: float, probe_ms: float, failures: int = 0, killed_at: float | None = None) -> dict:
    probe = ProbeStats(40, failures, probe_ms / 2, probe_ms, probe_ms)
    return asdict(WatchResult(30.0, {"ready": probe, "metrics": probe}, 700 * MB, peak_mb * MB, "/proc", killed_at))


def overload_report(goodput: float, ok: int, p99: float, peak_mb: float, probe_ms: float, wasted: float,
                    killed: bool = False) -> dict:
    capacity = Cell("binary", 32, requests=2000, throughput=200.0, p50_ms=150.0, p99_ms=300.0)
    client = LoadSummary(800.0, 20.0, sent=16000, sent_rps=800.0, ok=ok, goodput_rps=goodput, shed=12000,
                         shed_with_retry_after=12000, shed_p50_ms=1.0, shed_p99_ms=3.0, timeouts=100,
                         admitted_p50_ms=200.0, admitted_p99_ms=p99)
    server = {"drain_s": None if killed else 0.5, "killed_above_memory_limit": killed,
              "rows_for_late_or_departed_clients": wasted, "dropped_counters": {"rakuten_expired_requests_total": 7},
              "metrics_until": "last /metrics answer before the end (a lower bound)" if killed else "idle"}
    return {"machine": MACHINE, "server": {"url": "http://127.0.0.1:1", "started_here": True, "args": []},
            "products": {"source": "generated", "count": 4, "mean_image_kb": 40.0}, "base_rps": 200.0,
            "capacity": {"cell": asdict(capacity), "watch": watch(750, 5)},
            "loads": [{"multiple": 4.0, "client": asdict(client), "server": server,
                       "watch": watch(peak_mb, probe_ms, killed_at=12.0 if killed else None)}]}


def verdicts(report: dict, settings: OverloadSettings) -> dict[str, bool | None]:
    return {t["target"].split(" at ")[0]: t["met"] for t in targets(report, settings)}


def test_targets_met_by_a_server_that_sheds():
    settings = parse(OverloadSettings, [], "test")
    report = overload_report(goodput=190.0, ok=3800, p99=500.0, peak_mb=900, probe_ms=20, wasted=0)
    assert verdicts(report, settings) == {"goodput": True, "p99 of admitted": True, "server RSS peak": True,
                                          "probe ready": True, "probe metrics": True,
                                          "model work for timed-out or departed clients": True}
    text = render_overload({**report, "targets": targets(report, settings)}, settings)
    assert "12000 (12000 w/ Retry-After)" in text and "rakuten_expired_requests_total 7" in text
    assert "MISSED" not in text
    assert "pinned" not in text
    pinned = parse(OverloadSettings, ["--server-cpus", "0", "--client-cpus", "1"], "test")
    assert "pinned: server on CPU 0, load generator and probes on CPU 1" in render_overload(report, pinned)


def test_targets_missed_by_a_collapsing_server():
    settings = parse(OverloadSettings, ["--memory-limit-mb", "2048"], "test")
    report = overload_report(goodput=1.0, ok=20, p99=900.0, peak_mb=2050, probe_ms=4000, wasted=16000, killed=True)
    assert verdicts(report, settings) == {"goodput": False, "p99 of admitted": None, "server RSS peak": False,
                                          "probe ready": False, "probe metrics": False,
                                          "model work for timed-out or departed clients": False}
    text = render_overload({**report, "targets": targets(report, settings)}, settings)
    assert "2050 KILLED" in text and "killed at 12 s" in text and ">= 16000" in text
    assert "only 20 admitted: not judged" in text


def test_quick_defaults_resolve_and_lists_parse():
    quick = parse(ServingSettings, ["--quick", "--concurrency", "1,4", "--skip", "cold"], "test")
    assert (quick.duration, quick.warmup, quick.batch_sizes, quick.cold_starts) == (3.0, 1.0, (1, 32), 1)
    assert quick.concurrency == (1, 4) and quick.skip == ("cold",)
    full = parse(ServingSettings, ["--duration", "7"], "test")
    assert (full.duration, full.warmup, full.batch_sizes, full.cold_starts) == (7.0, 2.0, (1, 8, 32, 64), 2)
    overload = parse(OverloadSettings, ["--loads", "1,2.5,4"], "test")
    assert overload.loads == (1.0, 2.5, 4.0) and overload.duration == 20.0


def test_serving_report_shows_the_load_phases_and_ratios():
    cell = asdict(Cell("binary", 32, requests=1000, errors=0, throughput=150.0, p50_ms=200.0, p95_ms=250.0,
                       p99_ms=270.0, mean_model_batch=14.0))
    off = {**cell, "throughput": 100.0, "p99_ms": 450.0}
    report = {"machine": MACHINE, "config": {"duration_s": 3.0},
              "model": {"uri": "m", "version": "v1", "image_size": 64},
              "products": {"source": "generated", "count": 4, "mean_image_kb": 40.0},
              "ceiling": {"threads": 2, "decode_ms_per_image": 2.0, "text_ms_per_product": 0.01,
                          "rows": [{"batch_size": 32, "model_alone": 800.0, "with_preprocessing_serial": 180.0,
                                    "with_preprocessing_threads": 200.0}],
                          "best": {"with_preprocessing_threads": {"samples_per_s": 200.0, "batch_size": 32}}},
              "served": {"cells": {"batching_on": [cell], "batching_off": [off]}},
              "cold_start": {"runs": [{"source": "local folder", "ready_s": 9.0, "fetch_s": 0.01, "load_s": 0.4,
                                       "warmup_s": 0.5, "imports_and_start_s": 8.09, "first_inference_ms": 30.0,
                                       "first_inference_ok": True}]}}
    report["ratios"] = ratios(report)
    assert report["ratios"]["served_over_ceiling"][0]["ratio"] == 0.75
    assert report["ratios"]["batching_on_over_off"][0]["throughput"] == 1.5
    assert problems(report) == []
    text = render_serving(report)
    assert "imports + server start s" in text and "8.09" in text and "0.75" in text


def test_serving_report_plots_latency_against_throughput(tmp_path):
    cells = [asdict(Cell("binary", c, requests=100, errors=0, throughput=t, p50_ms=p50, p95_ms=p50 * 1.2,
                         p99_ms=p50 * 1.5, mean_model_batch=4.0)) for c, t, p50 in ((1, 30.0, 30.0), (8, 120.0, 60.0))]
    report = {"machine": MACHINE, "served": {"cells": {"batching_on": cells, "batching_off": cells[:1]}}}
    assert latency_plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not latency_plot({"machine": MACHINE}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_capture_cost_pairs_each_rate_with_capture_off_round_by_round():
    from benchmarks.capture_cost import CaptureCostSettings, layout, table

    def run(round_, rate, throughput, p99):
        return {"round": round_, "rate": rate, "throughput": throughput, "p99_ms": p99, "cpu_ms": 6.0,
                "written": 10 * rate, "dropped": 0, "writer_cpu_s": rate, "s3_cpu_s": rate, "budget_wait_s": 0.0}

    # Round 1 runs 10 % faster than round 0: the paired ratio ignores it, a ratio of means would not.
    results = [run(0, 0.0, 200.0, 100.0), run(0, 1.0, 196.0, 102.0),
               run(1, 0.0, 220.0, 100.0), run(1, 1.0, 211.2, 106.0)]
    lines = table(results, (0.0, 1.0)).splitlines()
    assert lines[2].startswith("| off | 210.0 (200.0 / 220.0) |") and "| 1.000 ± 0.000 |" in lines[2]
    assert lines[3].startswith("| 1 | 203.6 ") and "| 0.970 ± 0.010 | 1.040 ± 0.020 |" in lines[3]

    pinned = parse(CaptureCostSettings, ["--server-cpus", "0", "--client-cpus", "1"], "")
    assert (pinned.server_cpus, pinned.client_cpus) == ((0,), (1,))
    assert layout(pinned) == "server on CPU 0, client and S3 server on CPU 1"
    assert layout(parse(CaptureCostSettings, [], "")) == "all processes on all CPUs"
