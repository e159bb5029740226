"""Classify one product with a running server, from the command line.

    python -m model_server.client --url http://127.0.0.1:8080 \\
        --designation "Piscine tubulaire ronde" --description "<p>Filtration incluse</p>" --image photo.jpg

A server with API keys on wants one: ``API_KEY=...``, ``API_KEY_FILE=...`` or ``--api-key-file``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME
from rakuten_common.options import add_options, from_args
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_server.client",
                                     description="Classify one product with a running rakuten-classifier.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    parser.add_argument("--model-name", default=MODEL_NAME, help="model name in the V2 routes")
    parser.add_argument("--designation", required=True, help="the product title")
    parser.add_argument("--description", default="", help="the description (HTML allowed)")
    parser.add_argument("--image", type=Path, required=True, help="JPEG/PNG/WebP file")
    parser.add_argument("--top-k", type=int, default=3, help="codes to show, best first")
    add_options(parser, ApiKeyOptions)
    args = parser.parse_args(argv)
    keys = from_args(ApiKeyOptions, args)
    try:
        key = api_key(keys.api_key, keys.api_key_file)
    except ApiKeyError as exc:
        print(exc, file=sys.stderr)
        return 1
    product = Product(args.designation, args.description, args.image.read_bytes())
    body = json.dumps(infer_request([product], args.top_k)).encode()
    status, answer = post(infer_url(args.url, args.model_name), body,
                          {"Content-Type": "application/json", **auth_headers(key)})
    if status != 200:
        print(f"HTTP {status}: {answer.get('error', answer)}", file=sys.stderr)
        return 1
    print(f"designation: {args.designation}")
    for rank, (code, probability) in enumerate(parse_response(answer)[0], start=1):
        print(f"  #{rank} prdtypecode {code}  probability {probability:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
