"""`helm test` smoke test of the predictor: V2 ready, model metadata, one inference call.

    python /scripts/smoke_test.py --url http://<isvc>-predictor.<namespace>.svc.cluster.local --model rakuten-classifier

Runs in the model-server image (model_server.client speaks the documented V2 contract) and
draws its own product photo with Pillow, so it needs nothing but the predictor.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.request

from PIL import Image, ImageDraw

from model_server.client import Product, infer_request, infer_url, parse_response, post


def get(url: str, timeout: float = 10.0) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"{}")


def photo() -> bytes:
    image = Image.new("RGB", (256, 256), (235, 235, 235))
    ImageDraw.Draw(image).ellipse((48, 48, 208, 208), fill=(30, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="predictor base URL")
    parser.add_argument("--model", default="rakuten-classifier")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for /v2/health/ready")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")

    deadline = time.monotonic() + args.wait
    while True:
        try:
            status, body = get(f"{base}/v2/health/ready")
            if status == 200 and body.get("ready") is not False:
                break
            problem = f"HTTP {status} {body}"
        except OSError as exc:
            problem = str(exc)
        if time.monotonic() >= deadline:
            print(f"FAIL: {base}/v2/health/ready: {problem}", file=sys.stderr)
            return 1
        time.sleep(3)
    print(f"ok: {base}/v2/health/ready")

    status, metadata = get(f"{base}/v2/models/{args.model}")
    names = sorted(i["name"] for i in metadata.get("inputs", []))
    if status != 200 or names != ["description", "designation", "image"]:
        print(f"FAIL: model metadata: HTTP {status} {metadata}", file=sys.stderr)
        return 1
    print(f"ok: /v2/models/{args.model} inputs {names}")

    product = Product("Piscine tubulaire ronde 3 m", "<p>Filtration &eacute;t&eacute; incluse</p>", photo())
    status, answer = post(infer_url(base, args.model), json.dumps(infer_request([product], top_k=3)).encode(),
                          {"Content-Type": "application/json"})
    if status != 200:
        print(f"FAIL: infer: HTTP {status} {answer}", file=sys.stderr)
        return 1
    top = parse_response(answer)[0]
    if len(top) != 3 or not all(0.0 <= p <= 1.0 for _, p in top):
        print(f"FAIL: infer: unexpected answer {answer}", file=sys.stderr)
        return 1
    print(f"ok: infer -> top-3 {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
