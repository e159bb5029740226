"""A real Prometheus (Debian's package) on 127.0.0.1 scraping one model server as the chart's
PodMonitor would (the labels its relabelling gives a predictor pod), with the chart's rules."""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from rakuten_common.processes import ServerProcess, free_port
from tests.support.helm import NAMESPACE

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
POD = "rakuten-predictor-7d9f-abcde"


def require(tool: str | None, name: str) -> str:
    """Skip on a developer machine without Prometheus; fail under CI (env CI set)."""
    if tool is None:
        message = f"{name} is not installed (apt-get install -y prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return tool


class Prometheus:
    def __init__(self, url: str, process: ServerProcess):
        self.url, self.process = url, process

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=20) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> dict:
        """Instant query; raises with Prometheus' error message on a bad expression."""
        try:
            answer = self.api("query", query=expr)
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
            raise AssertionError(f"{body.get('errorType')}: {body.get('error')}\n  in: {expr}") from None
        assert answer["status"] == "success", answer
        return answer["data"]


@contextmanager
def running_prometheus(workdir: Path, server_url: str, isvc: str, rule_groups: list[dict]):
    """Prometheus scraping ``server_url`` every second, evaluating ``rule_groups`` every second."""
    binary = require(PROMETHEUS, "prometheus")
    (workdir / "rules.yml").write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(workdir / "rules.yml")],
        "scrape_configs": [{
            "job_name": f"{NAMESPACE}/{isvc}-predictor",
            "scrape_interval": "1s", "scrape_timeout": "1s", "metrics_path": "/metrics",
            # what the PodMonitor's relabelling produces on a predictor pod
            "static_configs": [{"targets": [urllib.parse.urlparse(server_url).netloc],
                                "labels": {"namespace": NAMESPACE, "pod": POD, "isvc": isvc,
                                           "container": "kserve-container"}}],
        }],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = ServerProcess([binary, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], workdir / "prometheus.log", cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_until_ready(f"{url}/-/ready", timeout=60)
        yield Prometheus(url, process)
    finally:
        process.stop()
