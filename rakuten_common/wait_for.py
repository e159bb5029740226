"""Wait until a pod's dependencies are there, then exit 0; exit 1 after ``--timeout``.

The init containers of the chart run it from the training and model-server images (both ship
``rakuten_common``), so S3 is reached exactly as the job and the server reach it (AWS_* / S3_*):

    python -m rakuten_common.wait_for --bucket rakuten-models --url http://mlflow:5000/health
    python -m rakuten_common.wait_for --model s3://rakuten-models/rakuten-classifier --timeout 3600

Each check is polled with ``rakuten_common.processes.wait_until`` under one shared deadline;
while one is not ready, why not is logged at every poll.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args, option
from rakuten_common.processes import http_ok, wait_until

logger = logging.getLogger("rakuten.wait_for")


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class WaitSettings:
    buckets: tuple[str, ...] = option((), flag="--bucket", type=_names, metavar="NAME[,NAME]", shown="none",
                                      help="S3 buckets that must exist (and be listable with these credentials)")
    urls: tuple[str, ...] = option((), flag="--url", type=_names, metavar="URL[,URL]", shown="none",
                                   help="URLs that must answer 2xx")
    models: tuple[str, ...] = option((), flag="--model", type=_names, metavar="URI[,URI]", shown="none",
                                     help="model URIs (folder or s3://bucket/prefix) that must hold a complete version")
    timeout: float = option(900.0, help="seconds before giving up")
    interval: float = option(5.0, help="seconds between two polls")


def bucket_problem(bucket: str) -> str | None:
    """A listing, not HeadBucket: it needs s3:ListBucket everywhere (MinIO, AWS, moto alike)."""
    from botocore.exceptions import ClientError

    from rakuten_common.storage import s3_client

    try:
        s3_client().list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as exc:  # the S3 error code says why: NoSuchBucket, AccessDenied, InvalidAccessKeyId...
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', exc)}"
    return None


def url_problem(url: str) -> str | None:
    return None if http_ok(url, timeout=5) else "no 2xx answer yet"


def model_problem(uri: str) -> str | None:
    from rakuten_common.artifacts import resolve_version
    from rakuten_common.storage import open_store

    version = resolve_version(open_store(uri))
    return "no complete model version (manifest.json) yet" if version is None else None


@dataclass(frozen=True)
class Check:
    what: str
    problem: Callable[[str], str | None]
    target: str

    def ready(self) -> bool:
        try:
            problem = self.problem(self.target)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            logger.info("waiting for %s: %s", self.what, problem)
        return problem is None


def checks_of(settings: WaitSettings) -> list[Check]:
    return ([Check(f"bucket {b}", bucket_problem, b) for b in settings.buckets]
            + [Check(f"url {u}", url_problem, u) for u in settings.urls]
            + [Check(f"model {m}", model_problem, m) for m in settings.models])


def wait_for(checks: list[Check], timeout: float, interval: float) -> list[str]:
    """Poll every check until ready or the deadline; return what never became ready."""
    deadline = time.monotonic() + timeout
    missing = []
    for check in checks:
        try:
            waited = wait_until(check.ready, max(0.0, deadline - time.monotonic()), check.what, interval=interval)
            logger.info("ready: %s (after %.0f s)", check.what, waited)
        except TimeoutError:
            missing.append(check.what)
    return missing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rakuten_common.wait_for", formatter_class=HelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    add_options(parser, WaitSettings)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    settings = from_args(WaitSettings, parser.parse_args(argv))
    checks = checks_of(settings)
    if not checks:
        parser.error("nothing to wait for: give --bucket, --url or --model")
    configure_logging()
    missing = wait_for(checks, settings.timeout, settings.interval)
    if missing:
        logger.error("gave up after %.0f s: %s not ready", settings.timeout, ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
