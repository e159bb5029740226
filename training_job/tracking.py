"""MLflow tracking of a training run (local store by default, ``MLFLOW_TRACKING_URI`` honoured)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import keras
import mlflow

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


def git_commit() -> str:
    """The commit the code was built from: ``GIT_COMMIT`` (set in images) or ``git rev-parse``."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_run(experiment: str, run_name: str) -> mlflow.ActiveRun:
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)
    mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name)


class EpochMetrics(keras.callbacks.Callback):
    """Logs Keras' per-epoch metrics to the active MLflow run, prefixed by ``prefix``."""

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix

    def on_epoch_end(self, epoch, logs=None):
        mlflow.log_metrics({f"{self.prefix}{k}": float(v) for k, v in (logs or {}).items()}, step=epoch)
