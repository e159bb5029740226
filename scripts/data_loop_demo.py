"""The production data loop on one machine, run by ``make data-loop-demo`` (docs/data-loop.md):

1. generate a sample (with its test split's true labels), train a model on the base and promote it;
2. serve the champion with capture on (every product, to a local folder) and send the sample's
   test products through the V2 client, with their productid;
3. build the review queue from the captures (least confident first, plus a control sample);
4. play the reviewer: fill the queue's ``prdtypecode`` with the sample's true labels;
5. write those corrections as a dataset increment (``python -m training_job.add_labels``);
6. retrain on base + increment, then run the gate and promote if the new model is not worse.

Each step runs the real command; their full output goes to files under ``--workdir`` (which
also holds the data, the model store, the captures and MLflow's database, so the demo touches
nothing else and starts afresh each time); the terminal shows each step's figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from rakuten_common.data_layout import TEST
from rakuten_common.processes import ServerProcess, free_port
from rakuten_common.v2_client import Product, infer_request, infer_url, parse_response, post
from training_job import sample_data

BATCH = 16
#: The demo server's capture queue: every product sent, images and all (64 MiB).
DEMO_QUEUE_BYTES = 64 * 1024 * 1024


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def show(text: str) -> None:
    print(f"    {text}", flush=True)


def run(args: list[str], log: Path, pattern: str) -> int:
    """Run ``python <args>``, its output into ``log``; print the lines matching ``pattern``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    show(f"$ python {' '.join(args)}   (log: {log})")
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    log.write_text(done.stdout + done.stderr)
    for line in (done.stdout + done.stderr).splitlines():
        if re.search(pattern, line):
            show(line.split(": ", 1)[-1].strip())  # the message, without time, level and logger
    show(f"exit code {done.returncode}")
    return done.returncode


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_products(data_dir: Path) -> tuple[list[Product], dict[int, int]]:
    """The sample's test products (with their productid) and their true codes by productid."""
    truth_by_index = {row[""]: int(row["prdtypecode"]) for row in read_rows(data_dir / sample_data.TEST_TRUTH_CSV)}
    products, truth = [], {}
    for row in read_rows(data_dir / TEST.features_csv):
        productid, imageid = int(row["productid"]), int(row["imageid"])
        image = TEST.image_path(data_dir, imageid, productid).read_bytes()
        products.append(Product(row["designation"], row["description"], image, productid))
        truth[productid] = truth_by_index[row[""]]
    return products, truth


def serve_and_send(args, model_uri: str, captures: Path, products: list[Product], truth: dict[int, int]) -> bool:
    """Serve the champion with capture on, send every product, stop (the SIGTERM drain flushes the captures)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = args.workdir / "2-server.log"
    # Every product, as fast as they come: no CPU budget for the writer, a queue that holds them all
    # (a served pod keeps the defaults: capture costs it 10m of CPU at most, docs/capture.md).
    show(f"$ python -m model_server --model_uri {model_uri} --capture_uri {captures} --capture_sample_rate 1 "
         f"--capture_writer_cpu 1 --capture_queue_bytes {DEMO_QUEUE_BYTES} (log: {log})")
    server = ServerProcess([sys.executable, "-m", "model_server", f"--model_uri={model_uri}", f"--http_port={port}",
                            f"--grpc_port={free_port()}", f"--capture_uri={captures}", "--capture_sample_rate=1",
                            "--capture_writer_cpu=1", f"--capture_queue_bytes={DEMO_QUEUE_BYTES}",
                            "--capture_flush_seconds=2"], log)
    try:
        server.wait_until_ready(f"{url}/v2/health/ready", timeout=300)
        right = answered = 0
        confidences = []
        for start in range(0, len(products), BATCH):
            batch = products[start:start + BATCH]
            body = infer_request(batch, top_k=3, request_id=f"demo-{uuid.uuid4().hex[:12]}")
            status, answer = post(infer_url(url), json.dumps(body).encode(),
                                  {"Content-Type": "application/json"})
            if status != 200:
                print(f"V2 call failed ({status}): {answer}", file=sys.stderr)
                return False
            for product, top in zip(batch, parse_response(answer)):
                answered += 1
                right += top[0][0] == truth[product.productid]
                confidences.append(top[0][1])
        show(f"{answered} products answered in {-(-len(products) // BATCH)} requests: "
             f"accuracy {right / answered:.1%} (against the sample's true labels), "
             f"mean top-1 probability {sum(confidences) / len(confidences):.2f}, "
             f"{sum(c <= args.max_confidence for c in confidences)} at or below {args.max_confidence}")
        return True
    except (RuntimeError, TimeoutError) as exc:
        print(f"The model server did not become ready: {exc}", file=sys.stderr)
        return False
    finally:
        server.stop(60)
        files = sorted(captures.glob("captures/date=*/*.jsonl.gz"))
        images = list(captures.glob("images/*.jpg"))
        show(f"server stopped; captures: {len(files)} records files, {len(images)} images in {captures}")


def fill_queue(queue: Path, labels: Path, truth: dict[int, int]) -> None:
    """The reviewer: each queue row gets the product's true code."""
    rows = read_rows(queue)
    corrected = 0
    for row in rows:
        row["prdtypecode"] = truth[int(row["productid"])]
        corrected += int(row["code_1"]) != row["prdtypecode"]
    with labels.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    by_sample = {kind: [r for r in rows if r["sample"] == kind] for kind in ("uncertain", "control")}
    wrong = {kind: sum(int(r["code_1"]) != r["prdtypecode"] for r in part) for kind, part in by_sample.items()}
    show(f"{len(rows)} products labelled into {labels}: the model's top-1 was wrong for {corrected} "
         f"({wrong['uncertain']} of {len(by_sample['uncertain'])} uncertain, "
         f"{wrong['control']} of {len(by_sample['control'])} control)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("results/data-loop-demo"),
                        help="everything the demo writes (emptied first)")
    parser.add_argument("--rows", type=int, default=1500, help="training rows of the generated sample")
    parser.add_argument("--test-rows", type=int, default=400, help="test products sent through the server")
    parser.add_argument("--train-args", default="--image-size 64 --epochs 8 --batch-size 32",
                        help="arguments of both trainings")
    parser.add_argument("--max-confidence", type=float, default=0.8, help="review queue threshold")
    parser.add_argument("--per-class", type=int, default=30, help="review queue cap per predicted code")
    parser.add_argument("--control", type=int, default=30, help="review queue control sample")
    args = parser.parse_args()
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    os.environ["CACHE_DIR"] = str(work / "cache")
    data, models, captures = work / "data", work / "models", work / "captures"
    train = ["-m", "training_job", "--data-dir", str(data), "--model-uri", str(models), *args.train_args.split()]
    gate = ["-m", "training_job.promote", "--data-dir", str(data)]
    decisive = r"PROMOTED|REFUSED|Nothing to do|ERROR"

    step(f"1. Generate a sample ({args.rows} training rows, {args.test_rows} test products with their true "
         f"labels), train on the base and promote: the champion.")
    sample_data.generate(data, rows=args.rows, test_rows=args.test_rows, seed=11, test_truth=True)
    if run([*train, "--increments", "none"], work / "1-train.log", r"Registered|Validation|Evaluation split|ERROR"):
        return 1
    if run(gate, work / "1-promote.log", decisive) != 0:
        return 1

    step("2. Serve the champion with capture on (every product) and send the test products through the client.")
    products, truth = test_products(data)
    if not serve_and_send(args, str(models), captures, products, truth):
        return 1

    step("3. Build the review queue from today's captures.")
    queue, labels = work / "review-queue.csv", work / "labels.csv"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    if run(["-m", "training_job.review_queue", "--captures", str(captures), "--since", today, "--max-confidence",
            str(args.max_confidence), "--per-class", str(args.per_class), "--control", str(args.control),
            "--output", str(queue)], work / "3-review-queue.log", r"Read |Review queue|ERROR"):
        return 1

    step("4. The reviewer: fill in the queue's prdtypecode column (here: the sample's true labels).")
    fill_queue(queue, labels, truth)

    step("5. Write the corrections as a dataset increment (checked first; manifest last).")
    if run(["-m", "training_job.add_labels", "--captures", str(captures), "--labels", str(labels),
            "--dataset", str(data)], work / "5-add-labels.log", r"Labels |Increment |already in|ERROR"):
        return 1

    step("6. Retrain on base + increment, then gate and promote.")
    if run(train, work / "6-train.log", r"with increments|Registered|Validation|Evaluation split|ERROR"):
        return 1
    if run(gate, work / "6-promote.log", decisive) not in (0, 3):
        return 1
    step(f"Done. MLflow: mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']} (the second run's "
         f"Dataset inputs name the base and the increment).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
