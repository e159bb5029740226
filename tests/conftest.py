"""Session fixtures chained like the product: sample data -> S3 API server -> training job
-> published model -> model server process. All real processes on 127.0.0.1."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# KServe parses sys.argv when it is first imported: pytest's own flags (-m, -k ...) must not reach it.
_argv, sys.argv = sys.argv, sys.argv[:1]
import kserve  # noqa: E402,F401

sys.argv = _argv

from tests.servers import REPO, start_model_server, start_s3_server
from training_job import sample_data

# Child processes (training job, model server, Locust) run this checkout's code, whichever
# checkout the editable install points at (worktrees, CI clones).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

BUCKET = "rakuten-models"
DATASETS_BUCKET = "rakuten-datasets"
# Small but real: ~1,600 products, 64 px images, enough epochs to learn both modalities.
SAMPLE_ROWS = 1600
TRAIN_ARGS = ["--image-size", "64", "--epochs", "10", "--max-tokens", "5000", "--batch-size", "32"]


@dataclass
class S3:
    url: str
    env: dict[str, str]


@dataclass
class Published:
    uri: str
    stdout: str
    stderr: str
    data_dir: Path
    tracking_uri: str
    data_uri: str


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """Generated data in the real layout, with two training images left out on purpose."""
    return sample_data.generate(tmp_path_factory.mktemp("sample"), rows=SAMPLE_ROWS, test_rows=30,
                                seed=7, missing_images=2)


@pytest.fixture(scope="session")
def s3(artifacts_dir) -> S3:
    server, url = start_s3_server(artifacts_dir / "moto_server.log")
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3

    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    for bucket in (BUCKET, DATASETS_BUCKET):
        client.create_bucket(Bucket=bucket)
    yield S3(url, env)
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch) -> S3:
    """The S3 settings in this process's environment (for in-process boto3 calls)."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


def run_module(module: str, args: list[str], env: dict[str, str], workdir: Path,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a container runs it (the S3 settings in ``env``)."""
    return subprocess.run([sys.executable, "-m", module, *args],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
                          cwd=workdir, capture_output=True, text=True, timeout=timeout)


def run_training(data_dir: Path | str, model_uri: str, env: dict[str, str], workdir: Path,
                 extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """The training job's real entrypoint, as the container runs it."""
    return subprocess.run(
        [sys.executable, "-m", "training_job", "--data-dir", str(data_dir), "--model-uri", model_uri,
         "--cache-dir", str(workdir / "cache"), *TRAIN_ARGS, *(extra or [])],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
             "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", **env},
        cwd=workdir, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="session")
def dataset_uri(sample_dir, s3, tmp_path_factory) -> str:
    """The sample dataset uploaded to the S3 API server with the real upload command."""
    uri = f"s3://{DATASETS_BUCKET}/sample"
    done = run_module("training_job.upload_data", [str(sample_dir), uri], s3.env, tmp_path_factory.mktemp("upload"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return uri


@pytest.fixture(scope="session")
def published(sample_dir, dataset_uri, s3, tmp_path_factory) -> Published:
    """A model trained by the training job on the dataset in S3 and published to s3://."""
    workdir = tmp_path_factory.mktemp("train")
    uri = f"s3://{BUCKET}/rakuten-classifier"
    done = run_training(dataset_uri, uri, s3.env, workdir, extra=["--ablation"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Published(uri, done.stdout, done.stderr, sample_dir, f"sqlite:///{workdir / 'mlflow.db'}", dataset_uri)


@pytest.fixture(scope="session")
def server_url(published, s3, artifacts_dir, tmp_path_factory) -> str:
    """Base URL of a model server process that loaded ``published`` from S3."""
    cache = tmp_path_factory.mktemp("model-cache")
    server, url = start_model_server(published.uri, artifacts_dir / "model_server.log",
                                     env={**s3.env, "MODEL_CACHE_DIR": str(cache)})
    yield url
    server.stop()


@pytest.fixture(scope="session")
def limited_server_url(published, s3, artifacts_dir, tmp_path_factory) -> str:
    """A second server with small limits, to exercise every refusal cheaply."""
    cache = tmp_path_factory.mktemp("model-cache-limited")
    server, url = start_model_server(
        published.uri, artifacts_dir / "model_server_limited.log",
        env={**s3.env, "MODEL_CACHE_DIR": str(cache)},
        extra_args=["--max_request_items=8", "--max_text_chars=5000", "--max_image_bytes=2000000",
                    "--max_image_pixels=30000000"])
    yield url
    server.stop()
