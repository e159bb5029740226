"""Locust scenarios for the ``rakuten-classifier`` V2 endpoint.

    locust --config loadtests/locust.conf -H http://127.0.0.1:8080            # default profile
    locust --config loadtests/locust.conf -H ... --load-shape step            # autoscaling demo
    locust --config loadtests/locust.conf -H ... --payload binary --top-k 5   # binary extension
    locust --config loadtests/locust.conf -H ... --shift all                  # drifted traffic

Each simulated user mostly classifies one product per request, sometimes a small batch (2-8
products in one request), and now and then reads the model metadata or the readiness probe.
Products (French title, HTML description or none, 500x500 JPEG) are built and encoded once at
start (``loadtests/products.py``); ``--shift`` replaces them by products unlike the training data
(one family, English texts, grayscale or tiny images), for the drift gauges and alerts. Every
answer is checked (status 200, outputs of shape [N, top_k], known codes, sorted probabilities); a
wrong answer counts as a failure. At the end the run exits non-zero if the failure ratio or the inference
p95/p99 exceed the thresholds
(``loadtests/thresholds.py``). The custom options are listed in ``loadtests/locust.conf`` and
docs/load-testing.md (Locust prints its --help before loading this file, so they are not there).
"""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

from locust import FastHttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, wherever locust runs from

from loadtests import thresholds
from loadtests.products import (
    PAYLOADS,
    SHIFTS,
    RequestPool,
    check_answer,
    load_products,
    parse_shifts,
    shifted_products,
)
from loadtests.profiles import SHAPES
from loadtests.shapes import LoadProfile  # noqa: F401 - Locust picks up the shape class
from rakuten_common.bundle import MODEL_NAME

logger = logging.getLogger("loadtest")

INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
METADATA_PATH = f"/v2/models/{MODEL_NAME}"
READY_PATH = "/v2/health/ready"
POOL: RequestPool | None = None


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    a = parser.add_argument
    a("--payload", choices=PAYLOADS, default="base64", env_var="LOCUST_PAYLOAD",
      help="images as base64 in JSON, or raw bytes with the binary tensor data extension")
    a("--top-k", type=int, default=3, env_var="LOCUST_TOP_K", help="top_k request parameter (1..27)")
    a("--data-dir", default="", env_var="LOCUST_DATA_DIR",
      help="dataset folder in the Rakuten layout to take products from (default: generated products)")
    a("--products", type=int, default=48, env_var="LOCUST_PRODUCTS", help="distinct products to cycle through")
    a("--shift", default="", env_var="LOCUST_SHIFT",
      help=f"send products unlike the training data instead of the normal mix: a comma-separated subset of "
           f"{','.join(SHIFTS)}, or all (generated products only)")
    a("--think-time", type=float, default=0.5, env_var="LOCUST_THINK_TIME",
      help="each user waits a random 0..THINK_TIME seconds between requests (0: closed loop)")
    a("--load-shape", choices=SHAPES, default="constant", env_var="LOCUST_LOAD_SHAPE",
      help="load profile (loadtests/profiles.py): constant (-u/-r/-t), smoke (~30 s) or step (HPA demo)")
    a("--smoke-users", type=int, default=4, env_var="LOCUST_SMOKE_USERS", help="peak users of the smoke profile")
    a("--step-users", type=int, default=8, env_var="LOCUST_STEP_USERS", help="users added at each step")
    a("--step-seconds", type=float, default=120, env_var="LOCUST_STEP_SECONDS", help="length of one step")
    a("--steps", type=int, default=5, env_var="LOCUST_STEPS", help="steps up (then two steps down)")
    a("--max-fail-ratio", type=float, default=0.01, env_var="LOCUST_MAX_FAIL_RATIO",
      help="fail the run above this failure ratio (0.01 = 1 %%)")
    a("--max-p95-ms", type=float, default=1000, env_var="LOCUST_MAX_P95_MS",
      help="fail the run when the inference p95 exceeds this (ms; 0: not checked)")
    a("--max-p99-ms", type=float, default=0, env_var="LOCUST_MAX_P99_MS",
      help="fail the run when the inference p99 exceeds this (ms; 0: not checked)")


@events.init.add_listener
def build_pool(environment, **_):
    """Build and encode the products once per load-generating process."""
    global POOL
    if isinstance(environment.runner, MasterRunner):
        return
    options = environment.parsed_options
    shifts = parse_shifts(options.shift)
    if shifts and options.data_dir:
        raise ValueError("--shift generates its products: leave --data-dir out")
    if shifts:
        products = shifted_products(max(2, options.products), shifts, seed=0)
    else:
        products = load_products(max(2, options.products), seed=0, data_dir=options.data_dir or None)
    POOL = RequestPool.build(products, options.top_k, options.payload)
    source = f"shifted: {','.join(shifts)}" if shifts else options.data_dir or "generated"
    logger.info("%d products (%s, mean image %.0f KB), %d batch requests, payload %s, top_k %d",
                len(POOL.singles), source, POOL.mean_image_bytes / 1024,
                len(POOL.batches), options.payload, options.top_k)


@events.quitting.add_listener
def apply_thresholds(environment, **_):
    """Set the exit code from the thresholds (replacing Locust's "any failure -> 1")."""
    if isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    limits = thresholds.Thresholds(options.max_fail_ratio, options.max_p95_ms, options.max_p99_ms)
    seen = thresholds.observe(environment.runner.stats, exceptions=len(environment.runner.exceptions))
    found = thresholds.breaches(seen, limits)
    logger.info("Result: %s", thresholds.summary(seen))
    if found:
        for breach in found:
            logger.error("Threshold breached: %s", breach)
        environment.process_exit_code = 1
    else:
        logger.info("Thresholds met (failure ratio <= %.2f%%, p95 <= %s ms%s)", 100 * limits.max_fail_ratio,
                    f"{limits.max_p95_ms:g}" if limits.max_p95_ms else "-",
                    f", p99 <= {limits.max_p99_ms:g} ms" if limits.max_p99_ms else "")
        environment.process_exit_code = 0


class ClassifierUser(FastHttpUser):
    """A shop back-office classifying products as they are listed."""

    network_timeout = 60.0
    connection_timeout = 10.0

    def wait_time(self):
        return random.uniform(0, self.environment.parsed_options.think_time)

    def _infer(self, encoded, name: str) -> None:
        with self.client.post(INFER_PATH, data=encoded.body, headers=encoded.headers, name=name,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                answer = response.json()
            except ValueError:
                response.failure("answer is not JSON")
                return
            problem = check_answer(answer, encoded.rows, POOL.top_k)
            if problem:
                response.failure(problem)
            else:
                response.success()

    @task(80)
    def classify_one(self):
        self._infer(random.choice(POOL.singles), "infer 1 product")

    @task(15)
    def classify_batch(self):
        if POOL.batches:
            self._infer(random.choice(POOL.batches), "infer 2-8 products")

    @task(3)
    def metadata(self):
        with self.client.get(METADATA_PATH, name="metadata", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            try:
                name = response.json().get("name")
            except (ValueError, AttributeError):
                name = None
            if name != MODEL_NAME:
                response.failure(f"metadata names model {name!r}, expected {MODEL_NAME!r}")

    @task(2)
    def readiness(self):
        with self.client.get(READY_PATH, name="ready", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
