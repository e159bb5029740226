"""Wait until the dependencies of a pod are there, then exit 0 (exit 1 after --timeout).

Runs as an init container in the training and model-server images (both ship rakuten_common,
so S3 access is configured exactly as the job and the server configure it: AWS_* / S3_* env).

    python /scripts/wait_for.py --bucket rakuten-models --url http://mlflow:5000/health
    python /scripts/wait_for.py --model s3://rakuten-models/rakuten-classifier
"""
from __future__ import annotations

import argparse
import sys
import time
import urllib.request


def bucket_ready(bucket: str) -> str | None:
    from rakuten_common.storage import s3_client

    s3_client().head_bucket(Bucket=bucket)
    return None


def url_ready(url: str) -> str | None:
    with urllib.request.urlopen(url, timeout=5) as response:
        return None if 200 <= response.status < 300 else f"HTTP {response.status}"


def model_ready(uri: str) -> str | None:
    from rakuten_common.artifacts import resolve_version
    from rakuten_common.storage import open_store

    version = resolve_version(open_store(uri))
    return "no complete model version (manifest.json) yet" if version is None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", action="append", default=[], help="an S3 bucket that must exist")
    parser.add_argument("--url", action="append", default=[], help="a URL that must answer 2xx")
    parser.add_argument("--model", action="append", default=[], help="a model URI that must hold a complete version")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before giving up")
    parser.add_argument("--interval", type=float, default=5, help="seconds between checks")
    args = parser.parse_args(argv)
    checks = ([(f"bucket {b}", bucket_ready, b) for b in args.bucket]
              + [(f"url {u}", url_ready, u) for u in args.url]
              + [(f"model {m}", model_ready, m) for m in args.model])
    deadline = time.monotonic() + args.timeout
    pending = list(checks)
    while True:
        still = []
        for name, check, target in pending:
            try:
                problem = check(target)
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                print(f"ready: {name}", flush=True)
            else:
                still.append((name, check, target))
                print(f"waiting for {name}: {problem}", flush=True)
        pending = still
        if not pending:
            return 0
        if time.monotonic() >= deadline:
            print(f"gave up after {args.timeout:.0f} s: {', '.join(n for n, _, _ in pending)}", file=sys.stderr, flush=True)
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
