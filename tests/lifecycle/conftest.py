"""Fixtures of the model-lifecycle tests: a real ``mlflow server`` process on 127.0.0.1 (sqlite
backend, artifacts proxied to the S3 test server, as the chart runs it), and model versions
trained by the real training job against it on the dataset in S3: a good one and a deliberately
worse one (1 epoch on 300 rows)."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rakuten_common.processes import ServerProcess, free_port
from tests.support.commands import run_module, run_training
from tests.support.s3 import BUCKET
from tests.support.servers import REPO
from tests.support.tiers import starts

MODEL_PREFIX = f"s3://{BUCKET}/lifecycle"
#: Every call the rollout makes on the API server, and the RBAC rule that grants it:
#: (HTTP method, path pattern for InferenceService "rakuten" in namespace "rakuten", apiGroup, resource, verb).
ROLLOUT_API = [
    ("GET", r"/apis/serving\.kserve\.io/v1beta1/namespaces/rakuten/inferenceservices/rakuten",
     "serving.kserve.io", "inferenceservices", "get"),
    ("PATCH", r"/apis/serving\.kserve\.io/v1beta1/namespaces/rakuten/inferenceservices/rakuten",
     "serving.kserve.io", "inferenceservices", "patch"),
    ("GET", r"/apis/apps/v1/namespaces/rakuten/deployments/rakuten-predictor", "apps", "deployments", "get"),
    ("GET", r"/api/v1/namespaces/rakuten/pods", "", "pods", "list"),
    ("POST", r"/api/v1/namespaces/rakuten/events", "", "events", "create"),
]
#: The worse challenger: one epoch on the first 300 rows.
WORSE_ARGS = ["--epochs", "1", "--max-rows", "300"]


@dataclass
class Trained:
    uri: str              # the published version's folder
    version: str          # its version id
    registry_version: str
    stdout: str


@pytest.fixture(scope="session")
@starts("server")
def mlflow_server(s3, tmp_path_factory) -> str:
    """``mlflow server`` with a sqlite backend in a temporary folder and artifacts in the S3 test server."""
    workdir = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = ServerProcess(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
         "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts", "--workers", "1"],
        workdir / "mlflow-server.log", env={**s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.url}, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    server.wait_until_ready(f"{url}/health", timeout=300)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def lifecycle_env(s3, mlflow_server, dataset_uri, tmp_path_factory) -> dict[str, str]:
    """What the training job and the promotion command get: S3, the tracking server, the dataset."""
    return {**s3.env, "MLFLOW_TRACKING_URI": mlflow_server, "DATA_DIR": dataset_uri,
            "CACHE_DIR": str(tmp_path_factory.mktemp("lifecycle-cache")), "PYTHONPATH": str(REPO)}


def _train(dataset_uri: str, env: dict[str, str], workdir: Path, extra: list[str]) -> Trained:
    done = run_training(dataset_uri, MODEL_PREFIX, env, workdir, extra=["--cache-dir", env["CACHE_DIR"], *extra])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from mlflow import MlflowClient

    run = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(
        [MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment_by_name("rakuten-classifier").experiment_id],
        order_by=["attributes.start_time DESC"], max_results=1)[0]
    uri = run.data.tags["model_uri"]
    return Trained(uri, uri.rsplit("/", 1)[1], run.data.tags["registry_version"], done.stdout + done.stderr)


@pytest.fixture(scope="session")
@starts("training")
def good_version(dataset_uri, lifecycle_env, tmp_path_factory) -> Trained:
    """The first model: the test suite's usual training settings."""
    return _train(dataset_uri, lifecycle_env, tmp_path_factory.mktemp("train-good"), [])


@pytest.fixture(scope="session")
@starts("training")
def worse_version(good_version, dataset_uri, lifecycle_env, tmp_path_factory) -> Trained:
    """A deliberately worse challenger, trained after the good one."""
    return _train(dataset_uri, lifecycle_env, tmp_path_factory.mktemp("train-worse"), WORSE_ARGS)


def promote(env: dict[str, str], *args: str, workdir: Path | None = None, timeout: float = 900,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m training_job.promote <args>`` as a container (or ``make promote``) runs it."""
    return run_module("training_job.promote", *args, env={**env, **(extra_env or {})}, cwd=workdir or REPO,
                      timeout=timeout)


def served_version(url: str) -> str:
    """The ``model_version`` a server at ``url`` answers with (the rollout's own smoke call)."""
    from training_job.promotion.smoke import call

    version, problem = call(url)
    assert version, problem
    return version
