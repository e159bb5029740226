"""The embedded-default demo: serve the newest model in MODEL_URI, classify one sample
product over V2 HTTP, print the answer, stop the server. Run by ``make demo`` after training."""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from model_server.client import Product, infer_request, infer_url, parse_response, post
from training_job.dataset import X_TRAIN, Y_TRAIN, image_path


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            raise SystemExit(f"the model server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the model server was not ready after {timeout:.0f} s")


def sample_product(data_dir: Path, row: int) -> tuple[Product, int]:
    with open(data_dir / X_TRAIN, encoding="utf-8") as f:
        x = list(csv.DictReader(f))[row]
    with open(data_dir / Y_TRAIN, encoding="utf-8") as f:
        code = int(list(csv.DictReader(f))[row]["prdtypecode"])
    image = image_path(data_dir, int(x["imageid"]), int(x["productid"])).read_bytes()
    return Product(x["designation"], x["description"], image), code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--row", type=int, default=0, help="which training row to send")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.http_port}"
    print(f"Starting the model server on {url} with the newest version in {args.model_uri}", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "model_server", f"--model_uri={args.model_uri}",
                               f"--http_port={args.http_port}", f"--grpc_port={args.http_port + 1}"])
    try:
        print(f"Ready after {wait_ready(url, server):.1f} s", flush=True)
        product, true_code = sample_product(args.data_dir, args.row)
        body = infer_request([product], top_k=3, request_id="demo-1")
        print("POST", infer_url(url))
        print(json.dumps({**body, "inputs": [
            {**t, "data": [d[:60] + "..." if len(d) > 60 else d for d in t["data"]]} for t in body["inputs"]]},
            indent=2, ensure_ascii=False))
        status, answer = post(infer_url(url), json.dumps(body).encode(), {"Content-Type": "application/json"})
        if status != 200:
            print(f"HTTP {status}: {answer}", file=sys.stderr)
            return 1
        print("Response:", json.dumps(answer, ensure_ascii=False))
        (ranked,) = parse_response(answer)
        print(f"\nProduct: {product.designation!r} (true prdtypecode {true_code})")
        for rank, (code, probability) in enumerate(ranked, start=1):
            print(f"  #{rank} prdtypecode {code}  probability {probability:.3f}")
        return 0
    finally:
        server.terminate()
        server.wait(30)
        print("Model server stopped.")


if __name__ == "__main__":
    sys.exit(main())
