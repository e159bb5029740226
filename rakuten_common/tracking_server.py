"""The MLflow tracking server as every command meets it: each call bounded by one setting.

``--tracking-timeout`` (env ``TRACKING_TIMEOUT``, seconds) bounds the TOTAL wait of one call to
the tracking server or registry, retries included. It is applied through MLflow's own HTTP
settings (``bound_tracking_calls``): ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 2 (three attempts),
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` = 1 (urllib3 sleeps 0 s after the first failure, 2 s
after the second), no jitter, ``Retry-After`` headers not obeyed, and
``MLFLOW_HTTP_REQUEST_TIMEOUT`` = (timeout - 2) // 3 seconds per attempt, so that
3 x per-attempt + 2 s of backoff <= the setting. A server that refuses connections fails a call
in about 2 s; one that accepts and never answers, in about the setting. (MLflow's defaults: 7
retries, backoff factor 2, 120 s per attempt: minutes per call.)

A tracking URI that is not ``http(s)`` (``sqlite:///mlflow.db``, the local default) makes no
HTTP call: the setting does not apply there.
"""
from __future__ import annotations

import logging
import os

from rakuten_common.options import bounded

logger = logging.getLogger("rakuten.tracking")
#: Run tag naming the model version a training run publishes.
VERSION_TAG = "model_version"

#: Default bound of one tracking call, seconds.
DEFAULT_TRACKING_TIMEOUT = 30
#: The option type of ``--tracking-timeout``: whole seconds, at least 5 (one second per attempt).
TRACKING_TIMEOUT = bounded(int, minimum=5)
TRACKING_TIMEOUT_HELP = ("bound, in seconds, of the whole wait of one call to the MLflow tracking server or "
                         "registry, retries included: 3 attempts of (this - 2) // 3 s each, 0 s then 2 s "
                         "apart (sets MLFLOW_HTTP_REQUEST_TIMEOUT, _MAX_RETRIES, _BACKOFF_FACTOR)")
RETRIES = 2
BACKOFF_FACTOR = 1


def http_settings(seconds: int) -> dict[str, str]:
    """MLflow's HTTP settings that bound one call (retries included) by ``seconds``."""
    backoff = BACKOFF_FACTOR * (2 ** RETRIES - 2)  # urllib3 sleeps factor x 2^(n-1) after failure n >= 2
    per_attempt = max(1, (int(seconds) - backoff) // (RETRIES + 1))
    return {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(per_attempt), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(RETRIES),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(BACKOFF_FACTOR), "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
            "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false"}


def bound_tracking_calls(seconds: int) -> None:
    """Apply ``http_settings(seconds)`` to this process (MLflow reads them at each call)."""
    os.environ.update(http_settings(seconds))


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, ``""`` when unset: then no registry is configured for serving."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip()


def error_line(exc: BaseException) -> str:
    """An exception's message as one bounded line (MLflow's can span lines)."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:400]


def fail_abandoned_runs(client, experiment_id: str, abandoned, marked_by: str) -> list[str]:
    """Mark FAILED the RUNNING runs of ``experiment_id`` for which ``abandoned(run)`` holds
    (left RUNNING by a killed job); returns their ids."""
    failed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200):
        if run.data.tags.get("mlflow.parentRunId") or not abandoned(run):
            continue
        client.set_tag(run.info.run_id, "failure", f"abandoned: its job ended without closing the run "
                                                   f"(marked by {marked_by})")
        client.set_terminated(run.info.run_id, status="FAILED")
        logger.warning("MLflow run %s (version %s) was left RUNNING by a killed job: marked FAILED",
                       run.info.run_id, run.data.tags.get(VERSION_TAG, "?"))
        failed.append(run.info.run_id)
    return failed
