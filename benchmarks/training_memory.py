"""Training memory and throughput as the dataset grows: peak RSS and samples/s for one epoch.

    python benchmarks/training_memory.py --rows 10000 40000 85000 --image-size 128

For each size it writes a dataset in the real layout (synthetic texts; 500x500 JPEGs drawn from
a pool of distinct photos and hard-linked, so decoding is real work but generation is quick),
then runs the real training entry point (`python -m training_job`, one epoch, no ablation) and
prints the process's peak RSS (VmHWM), the image-decoding rate and the training samples/s read
from its log. Figures depend on the machine: compare sizes within one run.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rakuten_common.data_layout import TRAIN, X_COLUMNS  # noqa: E402
from rakuten_common.labels import PRDTYPECODES, TRAIN_COUNTS  # noqa: E402
from rakuten_common.synthetic import make_image, make_text  # noqa: E402


def write_dataset(root: Path, rows: int, distinct_images: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    weights = np.array([TRAIN_COUNTS[c] for c in PRDTYPECODES], dtype=float)
    codes = rng.choice(PRDTYPECODES, size=rows, p=weights / weights.sum())
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    for i in range(distinct_images):
        path = pool / f"{i}.jpg"
        if not path.exists():
            buffer = io.BytesIO()
            make_image(rng, int(PRDTYPECODES[i % len(PRDTYPECODES)])).save(buffer, "JPEG", quality=85)
            path.write_bytes(buffer.getvalue())
    data = root / f"rows-{rows}"
    (data / TRAIN.image_dir).mkdir(parents=True, exist_ok=True)
    with open(data / TRAIN.features_csv, "w", newline="", encoding="utf-8") as fx, \
            open(data / TRAIN.labels_csv, "w", newline="", encoding="utf-8") as fy:
        x, y = csv.writer(fx), csv.writer(fy)
        x.writerow(["", *X_COLUMNS])
        y.writerow(["", "prdtypecode"])
        for i, code in enumerate(codes):
            productid, imageid = 300_000_000 + i, 2_000_000_000 + i
            designation, description = make_text(rng, int(code))
            x.writerow([i, designation, description, productid, imageid])
            y.writerow([i, int(code)])
            target = TRAIN.image_path(data, imageid, productid)
            if not target.exists():
                os.link(pool / f"{i % distinct_images}.jpg", target)
    return data


def peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def train_once(data: Path, workdir: Path, image_size: int, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "training_job", "--data-dir", str(data), "--model-uri", str(workdir / "store"),
            "--cache-dir", str(workdir / "cache"), "--epochs", "1", "--image-size", str(image_size), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    started = time.monotonic()
    with open(workdir / "train.log", "w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        peak = 0
        while process.poll() is None:
            peak = max(peak, peak_rss(process.pid))
            time.sleep(0.2)
    text = (workdir / "train.log").read_text()
    if process.returncode:
        raise SystemExit(f"training failed ({process.returncode}):\n{text[-3000:]}")
    train_rows = int(re.search(r"(\d+) train / ", text).group(1))
    epoch_seconds = int(re.search(r"Epoch 1/1 \((\d+) s\)", text).group(1))
    decode_rate = re.findall(r"decoded \d+/\d+ images \((\d+)/s\)", text)
    return {"peak_rss_mb": round(peak / 1e6), "train_rows": train_rows, "epoch_s": epoch_seconds,
            "samples_per_s": round(train_rows / max(epoch_seconds, 1), 1),
            "decode_images_per_s": int(decode_rate[-1]) if decode_rate else None,
            "total_s": round(time.monotonic() - started)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 40_000, 85_000])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workdir", type=Path, default=None, help="keep datasets and logs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--train-args", default="", help="extra training flags, e.g. '--batch-size 64'")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="training-memory-"))
    results = []
    print(f"{'rows':>7} {'peak RSS MB':>12} {'in-memory pixels MB':>20} {'decode img/s':>13} "
          f"{'train samples/s':>16} {'total s':>8}", flush=True)
    for rows in args.rows:
        data = write_dataset(root / "data", rows)
        workdir = root / f"run-{rows}"
        workdir.mkdir(parents=True, exist_ok=True)
        result = {"rows": rows, **train_once(data, workdir, args.image_size, args.train_args.split())}
        # what holding every decoded image in one array (and again in a tf.data constant) would take
        result["in_memory_pixels_mb"] = round(2 * rows * args.image_size ** 2 * 3 / 1e6)
        results.append(result)
        print(f"{rows:>7} {result['peak_rss_mb']:>12} {result['in_memory_pixels_mb']:>20} "
              f"{result['decode_images_per_s'] or '-':>13} {result['samples_per_s']:>16} {result['total_s']:>8}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
