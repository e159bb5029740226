"""Session fixtures chained like the product: sample data -> S3 API server -> training job
-> published model -> model server process. All real processes on 127.0.0.1.

Helpers live in ``tests/support``; a fixture that starts something slow says so with
``@starts(kind)`` and its tests get that marker (``tests/support/tiers.py``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# KServe parses sys.argv when it is first imported: pytest's own flags (-m, -k ...) must not reach it.
_argv, sys.argv = sys.argv, sys.argv[:1]
import kserve  # noqa: F401

sys.argv = _argv

from tests.support import tiers
from tests.support.commands import SAMPLE_ROWS, Published, run_module, run_training
from tests.support.s3 import BUCKET, DATASETS_BUCKET, S3
from tests.support.servers import REPO, start_model_server, start_s3_server
from tests.support.tiers import starts
from training_job import sample_data

pytest_plugins = ["tests.support.helm"]

# Child processes (training job, model server, Locust) run this checkout's code, whichever
# checkout the editable install points at (worktrees, CI clones).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

_guard = tiers.FastTierGuard() if tiers.FAST_TIER else None


def pytest_collection_modifyitems(config, items):
    """Each test gets the markers of the slow things its fixtures start, and ``e2e`` with any of them."""
    for item in items:
        for kind in tiers.markers_for(getattr(item, "fixturenames", [])):
            item.add_marker(kind)
        if any(item.get_closest_marker(kind) for kind in tiers.SLOW_KINDS):
            item.add_marker("e2e")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if _guard is not None:
        _guard.current = item.nodeid
    try:
        return (yield)
    finally:
        if _guard is not None:
            _guard.current = None


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """Generated data in the real layout, with two training images left out on purpose."""
    return sample_data.generate(tmp_path_factory.mktemp("sample"), rows=SAMPLE_ROWS, test_rows=30,
                                seed=7, missing_images=2)


@pytest.fixture(scope="session")
@starts("s3")
def s3(artifacts_dir) -> S3:
    server, url = start_s3_server(artifacts_dir / "moto_server.log")
    s3 = S3.at(url)
    client = s3.client()
    for bucket in (BUCKET, DATASETS_BUCKET):
        client.create_bucket(Bucket=bucket)
    yield s3
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3):
    """The one boto3 client of the S3 test server."""
    return s3.client()


@pytest.fixture
def s3_env(s3, monkeypatch) -> S3:
    """The S3 settings in this process's environment (for in-process boto3 calls)."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture(scope="session")
@starts("process")
def dataset_uri(sample_dir, s3, tmp_path_factory) -> str:
    """The sample dataset uploaded to the S3 API server with the real upload command."""
    uri = f"s3://{DATASETS_BUCKET}/sample"
    done = run_module("training_job.upload_data", str(sample_dir), uri, env=s3.env, cwd=tmp_path_factory.mktemp("upload"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return uri


@pytest.fixture(scope="session")
@starts("training")
def published(sample_dir, dataset_uri, s3, tmp_path_factory) -> Published:
    """A model trained by the training job on the dataset in S3 and published to s3://."""
    workdir = tmp_path_factory.mktemp("train")
    uri = f"s3://{BUCKET}/rakuten-classifier"
    done = run_training(dataset_uri, uri, s3.env, workdir, extra=["--ablation"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Published(uri, done.stdout, done.stderr, sample_dir, f"sqlite:///{workdir / 'mlflow.db'}", dataset_uri)


@pytest.fixture(scope="session")
@starts("server")
def server_url(published, s3, artifacts_dir, tmp_path_factory) -> str:
    """Base URL of a model server process that loaded ``published`` from S3."""
    cache = tmp_path_factory.mktemp("model-cache")
    server, url = start_model_server(published.uri, artifacts_dir / "model_server.log",
                                     env={**s3.env, "MODEL_CACHE_DIR": str(cache)})
    yield url
    server.stop()


@pytest.fixture(scope="session")
@starts("server")
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
