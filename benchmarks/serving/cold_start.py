"""(c) Cold start: process start -> ``/v2/health/ready``, from S3 (empty cache) and from a local folder.

The benchmark times process start to ready itself (ready polled every 50 ms); the server
reports how long each phase of its model load took in ``rakuten_model_load_seconds{phase}``
(fetch, load, warm-up). What remains is Python/TensorFlow/KServe imports and the HTTP
server's start.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.serving.common import log
from benchmarks.serving.metrics import LOAD_PHASES, load_phases, scrape
from benchmarks.serving.servers import (
    S3_BUCKET,
    environment,
    running_model_server,
    s3_api_server,
)
from loadtests.products import check_answer, encode
from rakuten_common.bundle import MODEL_NAME
from rakuten_common.v2_client import infer_url, post


def cold_start_once(model_uri: str, workdir: Path, label: str, env: dict[str, str], server_args: list[str],
                    products) -> dict:
    """One start into an empty model cache: seconds to ready, load phases, first inference."""
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=workdir))
    try:
        with running_model_server(model_uri, workdir / f"cold-{label}.log", server_args, batch_size=32,
                                  env={**env, "MODEL_CACHE_DIR": str(cache)}) as (server, ready):
            encoded = encode([products[0]], 1, "base64")
            sent = time.perf_counter()
            status, answer = post(infer_url(server.url), encoded.body, encoded.headers, timeout=60)
            first = time.perf_counter() - sent
            ok = status == 200 and check_answer(answer, 1, 1) is None
            phases = load_phases(scrape(server.url))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result = {"source": label, "ready_s": ready, "first_inference_ms": 1000 * first, "first_inference_ok": ok}
    result.update({f"{phase}_s": phases.get(phase) for phase in LOAD_PHASES})
    if len(phases) == len(LOAD_PHASES):
        result["imports_and_start_s"] = ready - sum(phases.values())
    return result


def _bundle_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())


def cold_start(model_dir: Path, manifest, workdir: Path, runs: int, server_args: list[str], products) -> dict:
    """``runs`` starts from a version published to a local S3 API server, then one from the folder."""
    from rakuten_common.artifacts import publish
    from rakuten_common.storage import s3_client

    results = []
    with s3_api_server(workdir / "moto_server.log") as env:
        with environment(env):
            s3_client().create_bucket(Bucket=S3_BUCKET)
            uri = f"s3://{S3_BUCKET}/{MODEL_NAME}"
            publish(model_dir, uri, manifest, progress=lambda *_: None)
        for i in range(runs):
            run = cold_start_once(uri, workdir, f"s3-{i}", env, server_args, products)
            results.append({**run, "source": "s3 (moto, empty cache)", "bundle_bytes": _bundle_bytes(model_dir)})
            log.info("  cold start from S3: ready in %.2f s (%s)", run["ready_s"], _phases_text(run))
    local = {**cold_start_once(str(model_dir), workdir, "local", {}, server_args, products), "source": "local folder"}
    log.info("  cold start from a local folder: ready in %.2f s (%s)", local["ready_s"], _phases_text(local))
    results.append(local)
    return {"runs": results}


def _phases_text(run: dict) -> str:
    return json.dumps({k: round(v, 2) for k, v in run.items() if k.endswith("_s") and v is not None})
