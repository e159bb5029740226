"""Smoke test of a running predictor: V2 ready, model metadata, one inference call.

    python -m model_server.smoke_test --url http://<isvc>-predictor.<namespace>.svc.cluster.local

The chart's `helm test` pod runs it from the model-server image, and `make e2e` runs it from
the host against the NodePort. It speaks the documented V2 contract through
``rakuten_common.v2_client`` and draws its own product with ``rakuten_common.synthetic``, so it
needs nothing but the predictor. With API keys on it sends the key of ``--api-key``,
``--api-key-file``, ``API_KEY`` or ``API_KEY_FILE`` (the chart's test pod mounts the keys Secret).
Exit 0 when every check passed, 1 at the first failure.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import urllib.request
from dataclasses import dataclass

from rakuten_common.bundle import MODEL_NAME
from rakuten_common.labels import PRDTYPECODES
from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args, option
from rakuten_common.processes import http_ok, wait_until
from rakuten_common.v2_client import (
    ApiKeyError,
    ApiKeyOptions,
    Product,
    api_key,
    auth_headers,
    infer_request,
    infer_url,
    parse_response,
    post,
)

logger = logging.getLogger("rakuten.smoke_test")
#: The inputs this check sends: the model's metadata must list them (it may list optional others, e.g. productid).
INPUTS = ["description", "designation", "image"]


class SmokeTestFailure(AssertionError):
    pass


@dataclass(frozen=True)
class SmokeSettings:
    url: str = option("http://127.0.0.1:8080", help="predictor base URL")
    model: str = option(MODEL_NAME, help="model name in the V2 routes")
    wait: float = option(120.0, help="seconds to wait for /v2/health/ready")
    top_k: int = option(3, flag="--top-k", help="classes asked for")


def product(code: int = 2583, seed: int = 7) -> Product:
    """A generated product of class ``code`` (text and a 500x500 JPEG photo)."""
    import numpy as np

    from rakuten_common.synthetic import make_image, make_text

    rng = np.random.default_rng(seed)
    designation, description = make_text(rng, code)
    buffer = io.BytesIO()
    make_image(rng, code).save(buffer, format="JPEG", quality=90)
    return Product(designation, description, buffer.getvalue())


def get_json(url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def run(settings: SmokeSettings, key: str | None = None) -> list[tuple[int, float]]:
    """Every check in order (``key``: the API key to send); returns the top-k answer. Raises SmokeTestFailure."""
    base, auth = settings.url.rstrip("/"), auth_headers(key)
    try:
        waited = wait_until(lambda: http_ok(f"{base}/v2/health/ready"), settings.wait, f"{base}/v2/health/ready",
                            interval=2)
    except TimeoutError as exc:
        raise SmokeTestFailure(str(exc)) from None
    logger.info("ok: %s/v2/health/ready (after %.0f s)", base, waited)

    metadata = get_json(f"{base}/v2/models/{settings.model}", headers=auth)
    names = sorted(i["name"] for i in metadata.get("inputs", []))
    if not set(INPUTS) <= set(names):
        raise SmokeTestFailure(f"model metadata: inputs {names}, expected at least {INPUTS}: {metadata}")
    logger.info("ok: /v2/models/%s inputs %s, version %s", settings.model, names, metadata.get("versions"))

    body = json.dumps(infer_request([product()], top_k=settings.top_k)).encode()
    status, answer = post(infer_url(base, settings.model), body, {"Content-Type": "application/json", **auth})
    if status != 200:
        raise SmokeTestFailure(f"infer: HTTP {status}: {answer}")
    top = parse_response(answer)[0]
    if len(top) != settings.top_k:
        raise SmokeTestFailure(f"infer: {len(top)} classes, asked for {settings.top_k}: {answer}")
    if unknown := [code for code, _ in top if code not in PRDTYPECODES]:
        raise SmokeTestFailure(f"infer: prdtypecode(s) {unknown} not among the 27 classes")
    probabilities = [p for _, p in top]
    if not all(0.0 <= p <= 1.0 for p in probabilities) or probabilities != sorted(probabilities, reverse=True):
        raise SmokeTestFailure(f"infer: probabilities out of [0, 1] or not sorted: {top}")
    logger.info("ok: infer -> top-%d %s (model_version %s)", settings.top_k, top, answer.get("model_version"))
    return top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_server.smoke_test", formatter_class=HelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    add_options(parser, SmokeSettings)
    add_options(parser, ApiKeyOptions)
    args = parser.parse_args(argv)
    settings, keys = from_args(SmokeSettings, args), from_args(ApiKeyOptions, args)
    configure_logging()
    try:
        run(settings, api_key(keys.api_key, keys.api_key_file))
    except (SmokeTestFailure, ApiKeyError, OSError, ValueError, KeyError) as exc:
        logger.error("FAIL: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
