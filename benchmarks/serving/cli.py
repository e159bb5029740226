"""Serving benchmark of rakuten-classifier: one run, one report.

    python benchmarks/serving_benchmark.py --model-uri model-store/rakuten-classifier [--quick]
        [--duration 10] [--json results/bench.json] [--profile]

(a) Ceiling   in-process throughput of the same model (``ModelRunner``, the traced function the
              server calls) at batch sizes 1/8/32/64: model alone, then with the shared
              preprocessing (JPEG decode + resize + text cleaning) done serially in one thread,
              and spread over a pool of cpu_count threads, pipelined with the model calls.
(b) Served    V2 HTTP throughput and p50/p95/p99 latency of a real ``python -m model_server``
              process, closed-loop clients at concurrency 1/8/32 (aiohttp, in a separate process
              so that the client does not share the server's GIL), one product (text + 500x500
              JPEG) per request, images in base64 JSON and with the binary extension, adaptive
              batching on (--max_batch_size 32) and off (--max_batch_size 1). Server CPU per
              request and the mean model batch (from /metrics) are shown too.
(c) Cold start  process start -> /v2/health/ready with the model fetched from a real S3 API
              server (moto_server on 127.0.0.1) into an empty cache, and from a local folder;
              the load phases (fetch, load, warm-up) read from rakuten_model_load_seconds.
(d) Ratios    served / ceiling (with preprocessing, best batch), batching on / off.
--profile     py-spy samples of the server under load at c=32 (batching on, base64): share of
              CPU per thread and per activity, and what holds the GIL.

Load generator and server share the machine: on a 2-core box the client takes part of the CPU
that the server would otherwise have. Only ratios measured in the same run are comparable.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path

from benchmarks.serving.common import json_safe, log, machine_info
from benchmarks.serving.settings import ServingSettings, parse
from rakuten_common.logs import configure_logging

PARTS = ("ceiling", "served", "cold")


def prepare_model(model_uri: str, workdir: Path) -> tuple[Path, object, dict]:
    """Fetch the model into ``workdir`` once; its folder, manifest and a description for the report."""
    from rakuten_common.artifacts import fetch
    from rakuten_common.bundle import PreprocessingSpec

    log.info("model: fetching %s", model_uri)
    model_dir, manifest = fetch(model_uri, workdir / "model-cache", progress=lambda *_: None)
    return model_dir, manifest, {"uri": model_uri, "version": manifest.version, "bundle": str(model_dir),
                                 "image_size": PreprocessingSpec.load(model_dir).image_size}


def prepare_products(count: int, data_dir: Path | None, seed: int = 0) -> tuple[list, dict]:
    """The products to send and a description for the report."""
    from loadtests.products import load_products

    products = load_products(count, seed=seed, data_dir=data_dir)
    mean_kb = sum(len(p.image) for p in products) / len(products) / 1024
    return products, {"source": str(data_dir) if data_dir else "generated (rakuten_common.synthetic)",
                      "count": len(products), "mean_image_kb": mean_kb}


def write_json(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_safe(report), indent=2, default=str) + "\n")
        log.info("results written to %s", path)
        from benchmarks.serving.report import latency_plot

        if latency_plot(report, path.with_suffix(".png")):
            log.info("latency-vs-throughput plot written to %s", path.with_suffix(".png"))


def run(settings: ServingSettings, workdir: Path, report: dict) -> None:
    """Fill ``report`` part by part (a partial report survives a failure)."""
    from benchmarks.serving.report import problems, ratios

    model_dir, manifest, report["model"] = prepare_model(settings.model_uri, workdir)
    products, report["products"] = prepare_products(settings.products, settings.data_dir)
    server_args = shlex.split(settings.server_args)
    if "ceiling" not in settings.skip:
        from benchmarks.serving.ceiling import ceiling

        log.info("(a) ceiling, in process")
        report["ceiling"] = ceiling(model_dir, products, list(settings.batch_sizes), settings.duration)
    if "served" not in settings.skip:
        from benchmarks.serving.served import served

        log.info("(b) served")
        report["served"] = served(model_dir, workdir, products, list(settings.concurrency), list(settings.payloads),
                                  settings.duration, settings.warmup, settings.top_k, server_args, settings.profile)
    if "cold" not in settings.skip:
        from benchmarks.serving.cold_start import cold_start

        log.info("(c) cold start")
        report["cold_start"] = cold_start(model_dir, manifest, workdir, settings.cold_starts, server_args, products)
    report["ratios"] = ratios(report)
    report["problems"] = problems(report)


def main(argv: list[str] | None = None) -> int:
    settings = parse(ServingSettings, argv, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    from loadtests.products import PAYLOADS

    for flag, given, known in (("--skip", settings.skip, PARTS), ("--payloads", settings.payloads, PAYLOADS)):
        if set(given) - set(known):
            raise SystemExit(f"{flag}: unknown {sorted(set(given) - set(known))}; choose from {', '.join(known)}")
    configure_logging()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported (ceiling)
    from benchmarks.serving.report import render

    workdir = settings.workdir or Path(tempfile.mkdtemp(prefix="rakuten-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine_info(), "config": {
        "duration_s": settings.duration, "warmup_s": settings.warmup, "concurrency": list(settings.concurrency),
        "batch_sizes": list(settings.batch_sizes), "payloads": list(settings.payloads), "top_k": settings.top_k,
        "quick": settings.quick, "server_args": shlex.split(settings.server_args)}}
    ok = False
    try:
        run(settings, workdir, report)
        ok = True
    finally:
        print(render(report) if "products" in report else "no results", flush=True)
        write_json(settings.json, report)
        if settings.workdir is None and ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log.info("logs kept in %s", workdir)
    for problem in report.get("problems", []):
        log.error("PROBLEM: %s", problem)
    return 1 if report.get("problems") else 0
