"""The rollout's smoke call: one V2 inference that must answer 200 with an expected ``model_version``.

The product is synthetic (``rakuten_common.synthetic``), the request built by the project's one
V2 client (``rakuten_common.v2_client``), so the call speaks exactly the documented contract,
API key included when the predictor has keys on (``key``: sent as ``Authorization: Bearer``).

A call may meet a cold predictor: a Knative revision scaled to zero starts a pod, downloads and
loads the model before it answers. So each call waits ``call_timeout`` (the route's own timeout,
``predictor.timeout``), and a failed call is retried until the smoke's deadline.
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from rakuten_common.bundle import MODEL_NAME

logger = logging.getLogger("rakuten.rollout")


@dataclass
class SmokeResult:
    ok: bool
    calls: int = 0
    failures: int = 0          # calls answered with an error or not at all
    versions: dict[str, int] | None = None  # model_version -> calls that answered it
    detail: str = ""


def _body() -> bytes:
    from rakuten_common.synthetic import make_image, make_text
    from rakuten_common.v2_client import Product, infer_request

    rng = np.random.default_rng(2220)
    designation, description = make_text(rng, 2220)
    buffer = io.BytesIO()
    make_image(rng, 2220, size=256).save(buffer, format="JPEG", quality=90)
    return json.dumps(infer_request([Product(designation, description, buffer.getvalue())], top_k=1)).encode()


def call(base_url: str, model_name: str = MODEL_NAME, timeout: float = 10.0,
         key: str | None = None) -> tuple[str | None, str | None]:
    """``(model_version, None)`` for a 200 answer, else ``(None, why not)``."""
    from rakuten_common.v2_client import auth_headers, infer_url, post

    try:
        status, answer = post(infer_url(base_url, model_name), _body(),
                              {"Content-Type": "application/json", **auth_headers(key)}, timeout=timeout)
    except OSError as exc:
        return None, f"no answer: {exc}"
    except ValueError:
        return None, "an answer that is not a V2 JSON body (an error page of a proxy?)"
    if status != 200:
        return None, f"HTTP {status} {str(answer)[:200]}"
    version = (answer.get("parameters") or {}).get("model_version") or answer.get("model_version")
    return (str(version), None) if version else (None, "answer without parameters.model_version")


def expect_version(base_url: str, expected: str, timeout: float, streak: int = 3, interval: float = 1.0,
                   model_name: str = MODEL_NAME, call_timeout: float = 10.0, key: str | None = None) -> SmokeResult:
    """Call until ``streak`` answers in a row carry ``expected`` (old pods may still be draining), or time out."""
    result = SmokeResult(False, versions={})
    deadline, in_a_row = time.monotonic() + timeout, 0
    while True:
        version, problem = call(base_url, model_name, call_timeout, key)
        result.calls += 1
        if version is None:
            result.failures += 1
            in_a_row, result.detail = 0, problem
        else:
            result.versions[version] = result.versions.get(version, 0) + 1
            in_a_row = in_a_row + 1 if version == expected else 0
            if version != expected:
                result.detail = f"answered model_version {version}, expected {expected}"
        if in_a_row >= streak:
            result.ok, result.detail = True, f"{streak} answers in a row with model_version {expected}"
            return result
        if time.monotonic() >= deadline:
            result.detail = f"after {timeout:.0f} s: {result.detail or 'no answer'}"
            return result
        time.sleep(interval)


def expect_some(base_url: str, expected: str, calls: int, timeout: float, interval: float = 1.0,
                model_name: str = MODEL_NAME, call_timeout: float = 10.0, key: str | None = None) -> SmokeResult:
    """Canary check: at least one of ``calls`` answers by ``expected`` (the others by the previous version).

    A call that fails (a revision cold-starting from zero, a gateway's 503) is retried, each waiting
    ``call_timeout``, until ``timeout`` has passed since the first: a call started before that
    deadline gets its whole ``call_timeout``."""
    result = SmokeResult(False, versions={})
    deadline, answered = time.monotonic() + timeout, 0
    while True:
        version, problem = call(base_url, model_name, call_timeout, key)
        result.calls += 1
        if version is None:
            result.failures += 1
            result.detail = problem
            logger.info("  canary smoke call %d failed (%s): retrying until the deadline", result.calls, problem)
        else:
            answered += 1
            result.versions[version] = result.versions.get(version, 0) + 1
            if version == expected:
                result.ok, result.detail = True, f"the canary answered with model_version {expected}"
                return result
            if answered >= calls:
                result.detail = f"{calls} answers, none by model_version {expected}: {result.versions}"
                return result
        if time.monotonic() >= deadline:
            result.detail = (f"after {timeout:.0f} s ({result.calls} calls, {result.failures} failed): "
                             f"{result.detail or 'no answer by model_version ' + expected}; answers {result.versions}")
            return result
        if version is None:
            time.sleep(interval)
