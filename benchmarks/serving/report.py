"""(d) Ratios of one serving-benchmark run, the problems that make it unusable, and its text report."""
from __future__ import annotations

from benchmarks.serving.common import fmt, machine_line, table

MAX_ERROR_RATIO = 0.01


def error_ratio(cell: dict) -> float:
    """Failed requests over all requests of one cell (1.0 when none was sent)."""
    total = cell["requests"] + cell["errors"]
    return cell["errors"] / total if total else 1.0


def _usable(cell: dict | None, max_error_ratio: float = MAX_ERROR_RATIO) -> bool:
    return bool(cell and cell["requests"] and error_ratio(cell) <= max_error_ratio)


def problems(report: dict, max_error_ratio: float = MAX_ERROR_RATIO) -> list[str]:
    """What makes the run unusable as a smoke check: errors in served cells, a failed first inference."""
    found = []
    for label, cells in report.get("served", {}).get("cells", {}).items():
        for c in cells:
            if error_ratio(c) > max_error_ratio:
                found.append(f"{label} {c['payload']} c={c['concurrency']}: {c['errors']} errors of "
                             f"{c['requests'] + c['errors']} "
                             f"({c.get('first_error') or 'no request completed'})")
    for run in report.get("cold_start", {}).get("runs", []):
        if not run.get("first_inference_ok"):
            found.append(f"cold start from {run['source']}: first inference failed")
    return found


def ratios(report: dict, max_error_ratio: float = MAX_ERROR_RATIO) -> dict:
    """Served / ceiling (best batch with preprocessing) and batching on / off, per cell."""
    out = {"served_over_ceiling": [], "batching_on_over_off": []}
    served_cells = report.get("served", {}).get("cells", {})
    best_of = report.get("ceiling", {}).get("best", {})
    best = max([best_of.get(k, {}).get("samples_per_s") or 0 for k in
                ("with_preprocessing_serial", "with_preprocessing_threads")], default=0)
    for label, cells in served_cells.items():
        for c in cells:
            if best and _usable(c, max_error_ratio):
                out["served_over_ceiling"].append({"server": label, "payload": c["payload"],
                                                   "concurrency": c["concurrency"], "ratio": c["throughput"] / best})
    on = {(c["payload"], c["concurrency"]): c for c in served_cells.get("batching_on", [])}
    off = {(c["payload"], c["concurrency"]): c for c in served_cells.get("batching_off", [])}
    for key, a in on.items():
        b = off.get(key)
        if _usable(a, max_error_ratio) and _usable(b, max_error_ratio):
            out["batching_on_over_off"].append({"payload": key[0], "concurrency": key[1],
                                                "throughput": a["throughput"] / b["throughput"],
                                                "p99": a["p99_ms"] / b["p99_ms"]})
    return out


def _header(report: dict) -> list[str]:
    model, products = report["model"], report["products"]
    return [f"rakuten-classifier serving benchmark - {report['machine']['date']}",
            machine_line(report["machine"]),
            f"model: {model['uri']} (version {model['version']}, image {model.get('image_size', '?')} px); "
            f"products: {products['source']}, {products['count']} x 500x500 JPEG, mean "
            f"{products['mean_image_kb']:.0f} KB; {report['config']['duration_s']:g} s per cell", ""]


def _ceiling(c: dict) -> list[str]:
    return [table(["batch", "model alone /s", "+ prep serial /s", f"+ prep {c['threads']} threads /s"],
                  [[r["batch_size"], fmt(r["model_alone"]), fmt(r["with_preprocessing_serial"]),
                    fmt(r["with_preprocessing_threads"])] for r in c["rows"]],
                  f"(a) Ceiling, in process (samples/s). One thread: decode+resize {c['decode_ms_per_image']:.2f} "
                  f"ms/image, text {c['text_ms_per_product']:.3f} ms/product")]


def _served(s: dict) -> list[str]:
    rows = [[label.replace("_", " "), cell["payload"], cell["concurrency"], fmt(cell["throughput"]),
             fmt(cell["p50_ms"]), fmt(cell["p95_ms"]), fmt(cell["p99_ms"]),
             f"{cell['errors']}/{cell['requests'] + cell['errors']}", fmt(cell["mean_model_batch"]),
             fmt(cell["server_cpu_cores"], 2), fmt(cell["server_cpu_ms_per_request"]), fmt(cell["client_cpu_cores"], 2)]
            for label, cells in s["cells"].items() for cell in cells]
    parts = [table(["server", "payload", "c", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "model batch",
                    "srv cores", "srv CPU ms/req", "client cores"], rows,
                   "(b) Served, V2 HTTP, 1 product per request, closed loop")]
    errors = {cell["first_error"] for cells in s["cells"].values() for cell in cells if cell.get("first_error")}
    parts += [f"    error seen: {e[:160]}" for e in sorted(errors)]
    return parts + ([""] if errors else [])


def _cold_start(cs: dict) -> list[str]:
    return [table(["source", "ready s", "fetch s", "load s", "warm-up s", "imports + server start s",
                   "1st inference ms"],
                  [[r["source"], fmt(r["ready_s"], 2), fmt(r.get("fetch_s"), 2), fmt(r.get("load_s"), 2),
                    fmt(r.get("warmup_s"), 2), fmt(r.get("imports_and_start_s"), 2), fmt(r["first_inference_ms"])]
                   for r in cs["runs"]],
                  "(c) Cold start: process start -> /v2/health/ready (phases from rakuten_model_load_seconds)")]


def _ratios(r: dict) -> list[str]:
    parts = []
    rows = [[x["server"].replace("_", " "), x["payload"], x["concurrency"], fmt(x["ratio"], 2)]
            for x in r["served_over_ceiling"]]
    if rows:
        parts.append(table(["server", "payload", "c", "served / ceiling"], rows,
                           "(d) Served throughput / in-process ceiling with preprocessing "
                           "(best batch size, serial or threads)"))
    rows = [[x["payload"], x["concurrency"], fmt(x["throughput"], 2), fmt(x["p99"], 2)]
            for x in r["batching_on_over_off"]]
    if rows:
        parts.append(table(["payload", "c", "throughput on/off", "p99 on/off"], rows, "(d) Adaptive batching on / off"))
    return parts


def _profile(p: dict) -> list[str]:
    parts = []
    for mode, title in (("cpu", "where the server's CPU time goes"), ("gil", "what holds the GIL")):
        data = p.get(mode) or {}
        if "error" in data or not data:
            parts.append(f"Profile ({mode}): {data.get('error', 'none')}\n")
            continue
        if data.get("cpu_cores_by_thread"):
            parts.append(table(["thread group", "CPU cores"], [[k, f"{v:.2f}"] for k, v in data["cpu_cores_by_thread"]],
                               f"Profile, c={p['concurrency']} {p['payload']} batching on ({data['throughput']:.0f} "
                               f"req/s under py-spy): CPU per thread from /proc (all threads, Python or not)"))
        parts.append(table(["thread", "share"], [[k, f"{v:.0%}"] for k, v in data["threads"]],
                           f"  py-spy {mode} samples: {title} ({data['samples']} samples, "
                           f"{data['busy_threads_avg']:.2f} threads busy on average; "
                           f"{data['idle_wait_samples_excluded']} idle-wait samples left out; Python threads only), "
                           "by thread"))
        parts.append(table(["activity", "share"], [[k, f"{v:.0%}"] for k, v in data["activities"]],
                           "  by activity (first matching category of the whole stack)"))
        parts.append(table(["leaf function", "share"], [[k[:90], f"{v:.0%}"] for k, v in data["top_leaves"]],
                           "  top leaf functions (self time)"))
    return parts


def render(report: dict) -> str:
    """The serving benchmark's text report: header, then tables (a) to (d) and the profile."""
    parts = _header(report)
    if report.get("ceiling"):
        parts += _ceiling(report["ceiling"])
    served = report.get("served") or {}
    if served.get("cells"):
        parts += _served(served)
    if report.get("cold_start"):
        parts += _cold_start(report["cold_start"])
    if report.get("ratios"):
        parts += _ratios(report["ratios"])
    if served.get("profile"):
        parts += _profile(served["profile"])
    return "\n".join(parts)


def latency_plot(report: dict, path) -> bool:
    """Write a latency-vs-throughput PNG of the served cells (p50 and p99 against req/s, one line per
    server setting and payload, a point per concurrency); False when there is nothing to plot."""
    cells = (report.get("served") or {}).get("cells") or {}
    if not any(cells.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for label, rows in cells.items():
        for payload in sorted({r["payload"] for r in rows}):
            points = sorted((r for r in rows if r["payload"] == payload and r["throughput"]),
                            key=lambda r: r["concurrency"])
            if not points:
                continue
            x = [r["throughput"] for r in points]
            line, = axes.plot(x, [r["p99_ms"] for r in points], marker="o",
                              label=f"{label.replace('_', ' ')}, {payload}: p99")
            axes.plot(x, [r["p50_ms"] for r in points], marker=".", linestyle="--", color=line.get_color(),
                      label=f"{label.replace('_', ' ')}, {payload}: p50")
            for r in points:
                axes.annotate(f"c={r['concurrency']}", (r["throughput"], r["p99_ms"]), fontsize=7,
                              textcoords="offset points", xytext=(3, 3))
    axes.set_xlabel("served requests/s (1 product each)")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    cpus = (report.get("machine") or {}).get("usable_cpus")
    axes.set_title("Served latency vs throughput" + (f" ({cpus} usable CPUs)" if cpus else ""))
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
