"""The embedded-default demo, run by ``make demo`` after training: serve the model in MODEL_URI,
classify one sample product over V2 HTTP, print the answer, stop the server.

The server's own log goes to a file (its path is printed); the terminal shows the demo's steps.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
from pathlib import Path

from rakuten_common.data_layout import TRAIN
from rakuten_common.processes import ServerProcess
from rakuten_common.v2_client import (
    Product,
    infer_request,
    infer_url,
    parse_response,
    post,
)


def sample_product(data_dir: Path, row: int) -> tuple[Product, int]:
    with open(data_dir / TRAIN.features_csv, encoding="utf-8") as f:
        x = list(csv.DictReader(f))[row]
    with open(data_dir / TRAIN.labels_csv, encoding="utf-8") as f:
        code = int(list(csv.DictReader(f))[row]["prdtypecode"])
    image = TRAIN.image_path(data_dir, int(x["imageid"]), int(x["productid"])).read_bytes()
    return Product(x["designation"], x["description"], image), code


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def show_request(product: Product, url: str) -> None:
    print(f"    POST {url}")
    print(f"    designation  {product.designation!r}")
    description = textwrap.shorten(product.description, 70, placeholder=" ...") if product.description else "(empty)"
    print(f"    description  {description}")
    print(f"    image        {len(product.image):,} bytes of JPEG, sent in base64")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--row", type=int, default=0, help="which training row to send")
    parser.add_argument("--log", type=Path, default=Path("results/demo-server.log"), help="the server's log file")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.http_port}"
    step(f"Starting the model server on {url} with {args.model_uri} (log: {args.log})")
    server = ServerProcess([sys.executable, "-m", "model_server", f"--model_uri={args.model_uri}",
                            f"--http_port={args.http_port}", f"--grpc_port={args.http_port + 1}",
                            "--drain_seconds=0"], args.log)
    try:
        try:
            seconds = server.wait_until_ready(f"{url}/v2/health/ready", timeout=300)
        except (RuntimeError, TimeoutError) as exc:
            print(f"The model server did not become ready: {exc}", file=sys.stderr)
            return 1
        step(f"Ready after {seconds:.1f} s. Classifying training row {args.row} over V2 REST:")
        product, true_code = sample_product(args.data_dir, args.row)
        body = infer_request([product], top_k=3, request_id="demo-1")
        show_request(product, infer_url(url))
        status, answer = post(infer_url(url), json.dumps(body).encode(), {"Content-Type": "application/json"})
        if status != 200:
            print(f"HTTP {status}: {answer.get('error', answer)}", file=sys.stderr)
            return 1
        (ranked,) = parse_response(answer)
        step(f"Answer from model version {answer.get('model_version')} (true prdtypecode {true_code}):")
        for rank, (code, probability) in enumerate(ranked, start=1):
            mark = "  <- right" if code == true_code else ""
            print(f"    #{rank} prdtypecode {code:>5}  probability {probability:.3f}{mark}")
        return 0
    finally:
        server.stop(30)
        step(f"Model server stopped (its log: {args.log}).")


if __name__ == "__main__":
    sys.exit(main())
