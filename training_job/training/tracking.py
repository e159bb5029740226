"""MLflow tracking of a training run: ``MLFLOW_TRACKING_URI``, else MLflow's own default
(``mlflow.db`` in the working directory, which ``mlflow ui`` started there opens).

An outage never costs a trained model. Starting the run must succeed (else ``TrackingError``,
before any training). After that, the first failing call is logged as one WARNING and tracking
stays off for the rest of the job (``TrainingRun.call``): the model is still published, and
registration then fails with one line (``training_job.training.registry.NotRegisteredError``).
Each call is bounded by ``--tracking-timeout`` (``rakuten_common.tracking_server``).
"""
from __future__ import annotations

import logging
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import keras
import mlflow

from rakuten_common.bundle import MANIFEST_FILE
from rakuten_common.errors import RakutenError
from rakuten_common.storage import Store
from rakuten_common.tracking_server import VERSION_TAG, error_line, fail_abandoned_runs
from training_job.data.quality import (
    DataQualityError,
    QualityReport,
    log_report,
    log_to_mlflow,
)

logger = logging.getLogger("rakuten.training")


class TrackingError(RakutenError, RuntimeError):
    """The MLflow tracking server cannot start (or record) a run."""


def published(store: Store, version: str | None) -> bool:
    return bool(version) and store.exists(f"{version}/{MANIFEST_FILE}")


class TrainingRun:
    """The MLflow run of one training job (see the module docstring)."""

    current: TrainingRun | None = None

    def __init__(self, experiment: str, version: str):
        self.experiment, self.version = experiment, version
        self.run_id: str | None = None
        self.down: str | None = None  # why tracking stopped, once a call failed

    def start(self, store: Store) -> TrainingRun:
        """Start the run; first mark FAILED the runs killed jobs left RUNNING (this version's
        earlier attempts, and runs whose version is complete in ``store``)."""
        from mlflow.exceptions import MlflowException

        try:
            experiment = mlflow.set_experiment(self.experiment)
            fail_abandoned_runs(mlflow.MlflowClient(), experiment.experiment_id,
                                lambda run: run.data.tags.get(VERSION_TAG) == self.version
                                or published(store, run.data.tags.get(VERSION_TAG)), "the next training run")
            self.run_id = mlflow.start_run(run_name=self.version, tags={VERSION_TAG: self.version}).info.run_id
        except MlflowException as exc:
            raise TrackingError(f"MLflow tracking at {mlflow.get_tracking_uri()} cannot start a run, nothing "
                                f"trained: {error_line(exc)}") from None
        TrainingRun.current = self
        return self

    def call(self, what: str, function, *args, **kwargs):
        """``function(*args, **kwargs)``, or nothing once tracking is down; a failure turns it down."""
        if self.down is not None:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # no tracking failure may cost the trained model
            self.down = f"{what}: {error_line(exc)}"
            logger.warning("MLflow tracking failed (%s); the job goes on without tracking", self.down)
            return None

    @contextmanager
    def nested(self, run_name: str):
        """A child run (ablation), best effort like every call."""
        child = self.call(f"starting run {run_name}", mlflow.start_run, run_name=run_name, nested=True)
        try:
            yield
        finally:
            if child is not None:
                self.call(f"ending run {run_name}", mlflow.end_run)

    def end(self, status: str) -> None:
        """End the run with ``status``; with tracking down, only forget it locally (no server call)."""
        if TrainingRun.current is self:
            TrainingRun.current = None
        if self.down is None:
            self.call("ending the run", mlflow.end_run, status=status)
        if self.down is not None:  # MLflow's exit hook would call the server once more
            from mlflow.tracking import fluent

            try:
                fluent._active_run_stack.get().clear()
            except AttributeError:
                pass


def record(what: str, function, *args, **kwargs) -> None:
    """``function(*args, **kwargs)`` (an MLflow logging call) through the current ``TrainingRun``:
    bounded and best effort, skipped once tracking is down; outside a job, only in an active run."""
    if TrainingRun.current is not None:
        TrainingRun.current.call(what, function, *args, **kwargs)
    elif mlflow.active_run():
        function(*args, **kwargs)


class EpochMetrics(keras.callbacks.Callback):
    """Each epoch's metrics to the current ``TrainingRun`` (synchronously, bounded, best effort)."""

    def on_epoch_end(self, epoch, logs=None):
        run = TrainingRun.current
        if run is not None and logs:
            run.call("logging epoch metrics", mlflow.log_metrics, {k: float(v) for k, v in logs.items()}, step=epoch)


def git_commit() -> str:
    """The commit the code was built from: ``GIT_COMMIT`` (set in images) or ``git rev-parse``."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def record_quality_failure(report: QualityReport, experiment: str, run_name: str) -> None:
    """Log the data-quality report; on any violation record a FAILED MLflow run (best effort) and
    raise ``DataQualityError``."""
    log_report(report)
    if not report.violations:
        return
    run = TrainingRun(experiment, run_name)
    try:
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=run_name, tags={VERSION_TAG: run_name})
        run.call("tagging the failure", mlflow.set_tag, "failure", "data_quality")
        run.call("logging the data-quality report", log_to_mlflow, report)
        run.end("FAILED")
    except Exception as exc:  # the data-quality error is the one to report
        logger.warning("could not record the data-quality failure in MLflow: %s", error_line(exc))
    raise DataQualityError(f"data quality: {len(report.violations)} rule(s) broken, nothing trained: "
                           + "; ".join(report.violations))
