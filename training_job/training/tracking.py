"""MLflow tracking of a training run: ``MLFLOW_TRACKING_URI``, else MLflow's own default
(``mlflow.db`` in the working directory, which ``mlflow ui`` started there opens)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow

from training_job.data.quality import (
    DataQualityError,
    QualityReport,
    log_report,
    log_to_mlflow,
)


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
    mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name)


def record_quality_failure(report: QualityReport, experiment: str, run_name: str) -> None:
    """Log the data-quality report; on any violation record a FAILED MLflow run and raise ``DataQualityError``."""
    log_report(report)
    if not report.violations:
        return
    start_run(experiment, run_name=run_name)
    try:
        mlflow.set_tag("failure", "data_quality")
        log_to_mlflow(report)
    finally:
        mlflow.end_run(status="FAILED")
    raise DataQualityError(f"data quality: {len(report.violations)} rule(s) broken, nothing trained: "
                           + "; ".join(report.violations))
