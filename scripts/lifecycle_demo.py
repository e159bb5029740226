"""The model lifecycle on one machine, run by ``make lifecycle-demo``:

1. train a model (registered in MLflow as the challenger) and promote it: the first champion;
2. train a deliberately worse one (1 epoch on 300 rows) and run the gate: refused (exit 3);
3. serve ``models:/rakuten-classifier@champion`` and check the V2 answer's ``model_version``.

Each step runs the real command (``python -m training_job``, ``python -m training_job.promote``,
``python -m model_server``); their full output goes to files under ``--logs``, the terminal shows
the decisive lines. MLflow and the model store are the ones ``make train``/``make serve`` use.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from rakuten_common.processes import ServerProcess
from training_job.promotion.smoke import call

WORSE = ["--epochs", "1", "--max-rows", "300"]


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def run(args: list[str], log: Path, show: str) -> int:
    """Run a command, its output into ``log``; print the lines matching ``show``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"    $ python {' '.join(args)}   (log: {log})", flush=True)
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    log.write_text(done.stdout + done.stderr)
    for line in (done.stdout + done.stderr).splitlines():
        if re.search(show, line):
            print(f"    {line.split(': ', 1)[-1]}")
    print(f"    exit code {done.returncode}", flush=True)
    return done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--train-args", default="--image-size 64 --epochs 12", help="arguments of the good training")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--logs", type=Path, default=Path("results/lifecycle-demo"))
    args = parser.parse_args()
    train = ["-m", "training_job", "--data-dir", args.data_dir, "--model-uri", args.model_uri]
    gate = ["-m", "training_job.promote", "--data-dir", args.data_dir]
    decisive = r"Registered|PROMOTED|REFUSED|Nothing to do|ERROR"

    step("1. Train a model; it is registered as the challenger. Then the gate makes it champion "
         "(the first model directly, else if not worse than the champion).")
    if run([*train, *args.train_args.split()], args.logs / "1-train.log", r"Registered|Validation|ERROR") != 0:
        return 1
    if run(gate, args.logs / "1-promote.log", decisive) not in (0, 3):
        return 1
    step("2. Train a deliberately worse model (1 epoch on 300 rows) and ask the gate again.")
    if run([*train, *args.train_args.split(), *WORSE], args.logs / "2-train-worse.log", r"Registered|ERROR") != 0:
        return 1
    refused = run(gate, args.logs / "2-promote.log", decisive)
    if refused != 3:
        print(f"expected the gate to refuse (exit 3), got {refused}", file=sys.stderr)
        return 1
    step(f"3. Serve models:/rakuten-classifier@champion on 127.0.0.1:{args.http_port}: the champion, "
         f"not the newest version")
    url = f"http://127.0.0.1:{args.http_port}"
    server = ServerProcess([sys.executable, "-m", "model_server", "--model_uri=models:/rakuten-classifier@champion",
                            f"--http_port={args.http_port}", f"--grpc_port={args.http_port + 1}"],
                           args.logs / "3-server.log")
    try:
        server.wait_until_ready(f"{url}/v2/health/ready", timeout=300)
        version, problem = call(url)
        for line in server.logs().splitlines():
            if "is registry version" in line:
                print(f"    {line.split(': ', 1)[-1]}")
        if version is None:
            print(f"V2 call failed: {problem}", file=sys.stderr)
            return 1
        print(f"    V2 answer: model_version {version}")
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"The model server did not become ready: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop(30)
        step("Server stopped. MLflow: make mlflow-ui (experiments rakuten-classifier and "
             "rakuten-classifier-promotions, model rakuten-classifier).")


if __name__ == "__main__":
    sys.exit(main())
