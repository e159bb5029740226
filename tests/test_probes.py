"""The chart's probes, run for real: ``python -m rakuten_common.wait_for`` against the real S3 API
server and a real server process, ``python -m model_server.smoke_test`` against a real model
server. The chart runs exactly these commands (tests/test_chart_wiring.py checks that)."""
from __future__ import annotations

from urllib.parse import urlparse

import pytest

from rakuten_common.processes import free_port
from tests.support.commands import run_module

pytestmark = pytest.mark.e2e


def test_wait_for_sees_bucket_model_and_url(published, s3, server_url):
    bucket = urlparse(published.uri).netloc
    done = run_module("rakuten_common.wait_for", f"--bucket={bucket}", f"--model={published.uri}",
                      f"--url={server_url}/v2/health/ready", "--timeout=30", env=s3.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ready:") == 3, done.stdout


def test_wait_for_gives_up_with_the_reasons(published, s3):
    bucket = urlparse(published.uri).netloc
    done = run_module("rakuten_common.wait_for", f"--model=s3://{bucket}/no-such-model", "--bucket=no-such-bucket",
                      f"--url=http://127.0.0.1:{free_port()}/health", "--timeout=2", "--interval=0.5", env=s3.env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no complete model version" in done.stdout and "no 2xx answer yet" in done.stdout
    assert "waiting for bucket no-such-bucket: NoSuchBucket" in done.stdout
    assert "gave up after 2 s" in done.stderr
    for what in ("bucket no-such-bucket", "model s3://", "url http://127.0.0.1"):
        assert what in done.stderr, done.stderr


def test_wait_for_comma_separated_lists_and_nothing_to_wait_for(published, s3):
    bucket = urlparse(published.uri).netloc
    done = run_module("rakuten_common.wait_for", f"--bucket={bucket},{bucket}", "--timeout=10", env=s3.env)
    assert done.returncode == 0 and done.stdout.count("ready: bucket") == 2, done.stdout + done.stderr
    done = run_module("rakuten_common.wait_for", "--timeout=1")
    assert done.returncode == 2 and "nothing to wait for" in done.stderr


def test_wait_for_refused_credentials_are_not_ready(published, s3):
    """A forbidden or unknown key is 'not ready' with its reason, not a crash."""
    bucket = urlparse(published.uri).netloc
    env = {**s3.env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    done = run_module("rakuten_common.wait_for", f"--bucket={bucket}", "--timeout=1", "--interval=0.5", env=env)
    assert done.returncode == 1 and f"waiting for bucket {bucket}:" in done.stdout


def test_smoke_test_against_a_real_server(server_url):
    done = run_module("model_server.smoke_test", f"--url={server_url}", "--model=rakuten-classifier")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "/v2/health/ready (after" in done.stdout and "ok: infer -> top-3" in done.stdout


def test_smoke_test_fails_clearly(server_url):
    done = run_module("model_server.smoke_test", f"--url=http://127.0.0.1:{free_port()}", "--wait=1")
    assert done.returncode == 1 and "FAIL:" in done.stderr and "not ready after" in done.stderr
    done = run_module("model_server.smoke_test", f"--url={server_url}", "--model=no-such-model", "--wait=5")
    assert done.returncode == 1 and "FAIL:" in done.stderr
