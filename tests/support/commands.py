"""The project's commands run as a container runs them: ``python -m <module>`` in a child process."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Small but real: ~1,600 products, 64 px images, enough epochs to learn both modalities.
SAMPLE_ROWS = 1600
TRAIN_ARGS = ["--image-size", "64", "--epochs", "10", "--max-tokens", "5000", "--batch-size", "32"]


@dataclass
class Published:
    uri: str
    stdout: str
    stderr: str
    data_dir: Path
    tracking_uri: str
    data_uri: str


def run_module(module: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` with ``env`` over this process's environment."""
    return subprocess.run([sys.executable, "-m", module, *args],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def run_training(data_dir: Path | str, model_uri: str, env: dict[str, str], workdir: Path,
                 extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """The training job's real entrypoint, as the container runs it (MLflow in ``workdir/mlflow.db``)."""
    return run_module("training_job", "--data-dir", str(data_dir), "--model-uri", model_uri,
                      "--cache-dir", str(workdir / "cache"), *TRAIN_ARGS, *(extra or []),
                      env={"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", **env}, cwd=workdir,
                      timeout=1200)
