"""The overload benchmark's verdicts (the targets of issue 10) and its text report."""
from __future__ import annotations

from benchmarks.serving.common import cpu_set_name, fmt, is_missing, machine_line, table

MB = 1024 * 1024
GOODPUT_SHARE = 0.9  # of capacity, at 4x
P99_FACTOR = 2.0  # admitted p99 at 4x over p99 at capacity
PROBE_P99_MS = 100.0
TARGET_MULTIPLE = 4.0
MIN_ADMITTED_FOR_P99 = 100  # fewer answered requests make no p99


def _at_target_load(report: dict) -> dict | None:
    """The measured load closest to 4x (the highest one when none reaches it)."""
    loads = [x for x in report.get("loads", []) if "client" in x]
    if not loads:
        return None
    at_least = [x for x in loads if x["multiple"] >= TARGET_MULTIPLE]
    return min(at_least, key=lambda x: x["multiple"]) if at_least else max(loads, key=lambda x: x["multiple"])


def _verdict(target: str, wanted: str, measured: str, met: bool | None) -> dict:
    return {"target": target, "wanted": wanted, "measured": measured, "met": met}


def targets(report: dict, settings) -> list[dict]:
    """Each target of issue 10, measured at the load closest to 4x capacity; ``met`` None when not measurable."""
    load = _at_target_load(report)
    capacity = report.get("capacity", {}).get("cell", {})
    if load is None or not capacity.get("throughput"):
        return []
    client, server, watch = load["client"], load["server"], load["watch"]
    at = f"at {load['multiple']:g}x"
    base = report["base_rps"]
    out = [_verdict(f"goodput {at}", f">= {GOODPUT_SHARE:.0%} of capacity ({GOODPUT_SHARE * base:.1f} req/s)",
                    f"{client['goodput_rps']:.1f} req/s ({client['goodput_rps'] / base:.0%})",
                    client["goodput_rps"] >= GOODPUT_SHARE * base)]
    p99, ref = client["admitted_p99_ms"], capacity.get("p99_ms")
    measurable = client["ok"] >= MIN_ADMITTED_FOR_P99 and not is_missing(ref)
    loose = "" if is_missing(ref) or P99_FACTOR * ref < 1000 * settings.deadline else ", above the deadline: not binding"
    out.append(_verdict(f"p99 of admitted {at}",
                        f"<= {P99_FACTOR:g} x p99 at capacity ({fmt(P99_FACTOR * ref, 0)} ms{loose})",
                        f"{fmt(p99, 0)} ms" + ("" if measurable else f" (only {client['ok']} admitted: not judged)"),
                        p99 <= P99_FACTOR * ref if measurable else None))
    limit = settings.memory_limit_mb
    peak = watch.get("rss_peak_bytes")
    rss_ok = None if peak is None or not limit else (peak <= limit * MB and not server.get("killed_above_memory_limit"))
    out.append(_verdict(f"server RSS peak {at}", f"<= {limit} MB" if limit else "bounded (no limit given)",
                        (f"{peak / MB:.0f} MB" if peak else "n/a")
                        + (" (killed above the limit)" if server.get("killed_above_memory_limit") else ""), rss_ok))
    for name in ("ready", "metrics"):
        probe = watch["probes"][name]
        out.append(_verdict(f"probe {name} {at}", f"p99 < {PROBE_P99_MS:g} ms, no failure",
                            f"p99 {fmt(probe['p99_ms'], 0)} ms, max {fmt(probe['max_ms'], 0)} ms, "
                            f"{probe['failures']}/{probe['samples']} failed",
                            None if not probe["samples"] else probe["p99_ms"] < PROBE_P99_MS and not probe["failures"]))
    wasted = server.get("rows_for_late_or_departed_clients")
    out.append(_verdict(f"model work for timed-out or departed clients {at}", "0 products",
                        "n/a (no /metrics)" if wasted is None else f"{_at_least(server)}{wasted:.0f} products",
                        None if wasted is None else wasted == 0))
    return out


def _at_least(server: dict) -> str:
    """'>= ' when the server's figures stop before it went idle (killed, or /metrics unanswered)."""
    return "" if server.get("metrics_until", "idle") == "idle" else ">= "


def _mb(value) -> str:
    return "-" if value is None else f"{value / MB:.0f}"


def _probe(p: dict) -> str:
    text = f"{fmt(p['p50_ms'], 0)}/{fmt(p['p99_ms'], 0)}/{fmt(p['max_ms'], 0)}"
    return text + (f" ({p['failures']} failed)" if p["failures"] else "")


def _client_rows(report: dict) -> list[list]:
    capacity = report["capacity"]
    cell, base = capacity["cell"], report.get("base_rps") or float("nan")
    rows = [[f"capacity (closed loop c={cell['concurrency']})", "-", "-", "-", fmt(cell["throughput"]),
             fmt(cell["throughput"] / base, 2), fmt(cell["p50_ms"], 0), fmt(cell["p99_ms"], 0), "-", "-", "-",
             str(cell["errors"]), fmt(cell["client_cpu_cores"], 2)]]
    for load in report.get("loads", []):
        if "client" not in load:
            rows.append([f"{load['multiple']:g}x", load.get("skipped", "-")] + ["-"] * 11)
            continue
        c = load["client"]
        rows.append([f"{load['multiple']:g}x open loop", fmt(c["offered_rps"]), fmt(c["sent_rps"]),
                     fmt(c["send_lag_p99_ms"], 0), fmt(c["goodput_rps"]), fmt(c["goodput_rps"] / base, 2),
                     fmt(c["admitted_p50_ms"], 0), fmt(c["admitted_p99_ms"], 0),
                     f"{c['shed']} ({c['shed_with_retry_after']} w/ Retry-After)" if c["shed"] else "0",
                     f"{fmt(c['shed_p50_ms'], 0)}/{fmt(c['shed_p99_ms'], 0)}", str(c["timeouts"]), str(c["errors"]),
                     fmt(c["sender_cpu_cores"], 2)])
    return rows


def _server_rows(report: dict) -> list[list]:
    watch = report["capacity"]["watch"]
    rows = [["capacity", _mb(watch["rss_start_bytes"]), _mb(watch["rss_peak_bytes"]),
             _probe(watch["probes"]["ready"]), _probe(watch["probes"]["metrics"]), "-", "-", "-"]]
    for load in report.get("loads", []):
        if "client" not in load:
            continue
        w, s = load["watch"], load["server"]
        counters = ", ".join(f"{k} {v:g}" for k, v in s.get("dropped_counters", {}).items()) or "n/a"
        wasted = s.get("rows_for_late_or_departed_clients")
        killed = s.get("killed_above_memory_limit")
        peak = _mb(w["rss_peak_bytes"]) + (" KILLED" if killed else "")
        if s.get("drain_s") is not None:
            drain = fmt(s["drain_s"], 1)
        else:
            drain = f"killed at {w['limit_hit_at_s']:.0f} s" if killed else "not idle"
        wasted = "n/a" if wasted is None else _at_least(s) + f"{wasted:.0f}"
        rows.append([f"{load['multiple']:g}x", _mb(w["rss_start_bytes"]), peak, _probe(w["probes"]["ready"]),
                     _probe(w["probes"]["metrics"]), wasted, counters, drain])
    return rows


def _placement(settings) -> str:
    """Which CPUs the server and the load generator ran on ('' when both could use any)."""
    if not (settings.server_cpus or settings.client_cpus):
        return ""
    return (f"pinned: server on {cpu_set_name(settings.server_cpus)}, "
            f"load generator and probes on {cpu_set_name(settings.client_cpus)}")


def render(report: dict, settings) -> str:
    """Header, the client's table, the server's table, the error kinds and the targets."""
    parts = [f"rakuten-classifier overload benchmark - {report['machine']['date']}", machine_line(report["machine"])]
    if "model" in report:
        parts.append(f"model: {report['model']['uri']} (version {report['model']['version']}, "
                     f"image {report['model'].get('image_size', '?')} px)")
    server = report.get("server", {})
    if server:
        parts.append(f"server: {server['url']}" + (f" started here with {server.get('args') or 'default'} arguments"
                                                    if server.get("started_here") else " (given)"))
    placement = _placement(settings)
    if placement:
        parts.append(placement)
    if "products" in report:
        p = report["products"]
        parts.append(f"products: {p['source']}, {p['count']} x 500x500 JPEG (mean {p['mean_image_kb']:.0f} KB), "
                     f"one per request, {settings.payload} payload; client deadline {settings.deadline:g} s"
                     + (f" (sent as header '{settings.timeout_header}')" if settings.timeout_header else "")
                     + f"; {settings.duration:g} s per rate from {settings.clients} sender processes")
    parts.append("")
    if "capacity" not in report:
        return "\n".join(parts + ["no results"])
    parts.append(table(["load", "offered/s", "sent/s", "send lag p99 ms", "goodput/s", "x capacity", "p50 ms",
                        "p99 ms", "shed", "shed p50/p99 ms", "timeouts", "errors", "client cores"],
                       _client_rows(report),
                       "Client: goodput = 2xx within the deadline; p50/p99 of those (admitted) requests"))
    parts.append(table(["load", "RSS start MB", "RSS peak MB", "ready p50/p99/max ms", "/metrics p50/p99/max ms",
                        "model rows for late clients", "server drop counters", "drain s"], _server_rows(report),
                       "Server: sampled from the load's start until it is idle again (drain: seconds after the last "
                       "client deadline); model rows for late clients = products through the model - answers received "
                       "in time"))
    for load in report.get("loads", []):
        for kind, n in (load.get("client") or {}).get("error_kinds", {}).items():
            parts.append(f"    {load['multiple']:g}x error seen {n} times: {kind}")
    verdicts = report.get("targets") or []
    if verdicts:
        parts.append("")
        parts.append(table(["target", "wanted", "measured", "verdict"],
                           [[t["target"], t["wanted"], t["measured"],
                             "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")] for t in verdicts],
                           "Targets of issue 10"))
    return "\n".join(parts)
