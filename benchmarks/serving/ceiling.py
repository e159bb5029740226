"""(a) Ceiling: the model's throughput in this process, alone and with the shared preprocessing.

The very ``ModelRunner`` the server calls (traced function), at each batch size: model alone
(inputs already decoded); with JPEG decode + resize + text cleaning done serially in the
calling thread; and with that preprocessing spread over a pool of ``cpu_count`` threads and
pipelined with the model calls (batch k+1 decoded while the model runs batch k).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.serving.common import log

PREPARED_COLUMNS = ("model_alone", "with_preprocessing_serial", "with_preprocessing_threads")


def timed_loop(step, duration: float, rows_per_step: int) -> float:
    """Call ``step`` for ``duration`` seconds (after two warm-up calls); return rows per second."""
    step()
    step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        step()
        done += rows_per_step
    return done / (time.perf_counter() - started)


def _mean_ms(fn, items, seconds: float) -> float:
    """Mean milliseconds of ``fn(item)`` over ``seconds``, cycling through ``items``."""
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        fn(items[n % len(items)])
        n += 1
    return 1000 * (time.perf_counter() - started) / n


def ceiling(bundle: Path, products, batch_sizes: list[int], duration: float) -> dict:
    import numpy as np

    from rakuten_common.bundle import load_bundle
    from rakuten_common.preprocessing import decode_image, product_text
    from rakuten_common.runner import ModelRunner

    model, _, spec = load_bundle(bundle)
    runner = ModelRunner(model, spec)
    size = spec.image_size
    threads = os.cpu_count() or 2
    decode_ms = _mean_ms(lambda p: decode_image(p.image, size), products, min(2.0, duration))
    text_ms = _mean_ms(lambda p: product_text(p.designation, p.description), products, 0.5)

    def prepare(p):
        return product_text(p.designation, p.description), decode_image(p.image, size)

    def assemble(prepared):
        return {"text": np.array([t for t, _ in prepared], dtype=object), "image": np.stack([i for _, i in prepared])}

    rows = []
    with ThreadPoolExecutor(threads, thread_name_prefix="prep") as pool:
        for b in batch_sizes:
            ready = assemble([prepare(products[i % len(products)]) for i in range(b)])
            runner.warm_up((b,))
            model_alone = timed_loop(lambda: runner(ready), duration, b)
            cursor = [0]

            def next_products():
                start = cursor[0]
                cursor[0] += b
                return [products[(start + i) % len(products)] for i in range(b)]

            serial = timed_loop(lambda: runner(assemble([prepare(p) for p in next_products()])), duration, b)
            pending = [[pool.submit(prepare, p) for p in next_products()]]

            def pipelined_step():
                current = [f.result() for f in pending[0]]
                pending[0] = [pool.submit(prepare, p) for p in next_products()]  # decoded while the model runs
                runner(assemble(current))

            pipelined = timed_loop(pipelined_step, duration, b)
            for f in pending[0]:
                f.result()
            rows.append({"batch_size": b, "model_alone": model_alone, "with_preprocessing_serial": serial,
                         "with_preprocessing_threads": pipelined})
            log.info("  ceiling batch %3d: model %7.1f/s, +prep serial %7.1f/s, +prep %d threads %7.1f/s",
                     b, model_alone, serial, threads, pipelined)
    best = {key: max(rows, key=lambda r: r[key]) for key in PREPARED_COLUMNS}
    return {"image_size": size, "threads": threads, "decode_ms_per_image": decode_ms, "text_ms_per_product": text_ms,
            "rows": rows, "best": {k: {"samples_per_s": v[k], "batch_size": v["batch_size"]} for k, v in best.items()}}
