"""The README's first command, ``make demo``, as a newcomer runs it: generate the sample data,
train, publish to local storage, serve, answer one V2 call, stop. Run on a smaller sample and
for fewer epochs than the default (the variables the Makefile documents), in temporary folders."""
from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from rakuten_common.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def demo_port() -> int:
    """A free HTTP port whose successor (the demo's gRPC port) is free too."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no pair of free ports")


def test_make_demo_trains_serves_and_answers_one_v2_call(tmp_path):
    port = demo_port()
    done = subprocess.run(
        ["make", "--no-print-directory", "demo", f"DATA_DIR={tmp_path / 'data'}", "SAMPLE_ROWS=810",
         f"MODEL_URI={tmp_path / 'store' / 'rakuten-classifier'}", f"HTTP_PORT={port}",
         "TRAIN_ARGS=--image-size 32 --epochs 2 --batch-size 32"],
        cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert (tmp_path / "data" / "X_train_update.csv").is_file()
    assert list((tmp_path / "store" / "rakuten-classifier").glob("*/manifest.json"))
    answer = re.search(r"==> Answer from model version (\S+) \(true prdtypecode (\d+)\):\n((?:    #\d .*\n){3})",
                       done.stdout)
    assert answer, done.stdout[-3000:]
    ranked = re.findall(r"#\d prdtypecode +(\d+) +probability ([0-9.]+)", answer.group(3))
    assert len(ranked) == 3 and all(0.0 <= float(p) <= 1.0 for _, p in ranked), answer.group(0)
    assert "==> Model server stopped" in done.stdout
