"""A real Prometheus (Debian's package) scrapes a real model server under a short load, evaluates
the chart's alerting rules, and answers every query of the Grafana dashboard.

The scrape target carries the labels the chart's PodMonitor gives predictor pods (namespace,
pod, and `isvc` from the serving.kserve.io/inferenceservice pod label), so the dashboard and the
rules run exactly as shipped, with Grafana's variables substituted.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from rakuten_common.v2_client import Product, infer_request, infer_url, post
from tests.support.helm import CHART, NAMESPACE, one, render
from tests.support.prometheus import PROMTOOL, Prometheus, require, running_prometheus

pytestmark = pytest.mark.prometheus

RATE_INTERVAL = "1m"


@pytest.fixture(scope="module")
def chart_objects(tools) -> list[dict]:
    return render(tools)


@pytest.fixture(scope="module")
def rules_file(chart_objects, tmp_path_factory) -> Path:
    """The groups of the rendered PrometheusRule, as a Prometheus rule file."""
    rule = one(chart_objects, "PrometheusRule")
    path = tmp_path_factory.mktemp("rules") / "rakuten.rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def isvc_name(chart_objects) -> str:
    return one(chart_objects, "InferenceService")["metadata"]["name"]


@pytest.fixture(scope="module")
def prometheus(server_url, chart_objects, isvc_name, tmp_path_factory):
    groups = one(chart_objects, "PrometheusRule")["spec"]["groups"]
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), server_url, isvc_name, groups) as running:
        yield running


def bodies(image: bytes) -> dict[str, bytes]:
    """A valid single-product request, and two the server must refuse (no inputs; an image that is not one)."""
    return {
        "valid": json.dumps(infer_request([Product("Coussin de chaise en lin", "<b>40 x 40 cm</b>", image)])).encode(),
        "empty": json.dumps({"inputs": []}).encode(),
        "not_image": json.dumps(infer_request([Product("Lampe", "", b"this is not a picture")])).encode(),
    }


def send(server_url: str, payloads: list[bytes]) -> dict[int, int]:
    """Send the requests 4 at a time (so that batches form); count the answers by status."""
    headers = {"Content-Type": "application/json"}
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda body: post(infer_url(server_url), body, headers, timeout=30)[0], payloads))
    return {s: statuses.count(s) for s in set(statuses)}


def wait_for(prometheus: Prometheus, expr: str, at_least: float, timeout: float = 60) -> None:
    """Bounded wait until the instant value of `expr` reaches `at_least`."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(expr)["result"]
        if result and float(result[0]["value"][1]) >= at_least:
            return
        assert time.monotonic() < deadline, f"Prometheus never saw {expr} >= {at_least}: {result}"
        time.sleep(0.5)


def grafana_to_promql(expr: str, isvc: str) -> str:
    """Substitute Grafana's variables; turn label_values(m, l) into the equivalent PromQL."""
    expr = (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$namespace", NAMESPACE)
            .replace("$isvc", isvc))
    if m := re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr.strip()):
        expr = f"group by ({m.group(2)}) ({m.group(1)})"
    assert "$" not in expr, expr
    return expr


def test_promtool_accepts_the_rendered_rules(rules_file):
    binary = require(PROMTOOL, "promtool")
    done = subprocess.run([binary, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_dashboard_and_alerts_on_a_real_prometheus(prometheus, server_url, sample_dir, isvc_name, chart_objects):
    image = next((sample_dir / "images" / "image_train").glob("*.jpg")).read_bytes()
    requests = bodies(image)
    selector = f'namespace="{NAMESPACE}", isvc="{isvc_name}"'
    # 1. every series exists and has been scraped once, so that the burst shows up as increases
    assert send(server_url, list(requests.values())) == {200: 1, 400: 2}
    wait_for(prometheus, f"count(rakuten_rejected_requests_total{{{selector}}})", 2)
    before = float(prometheus.query(f"sum(rakuten_predictions_total{{{selector}}})")["result"][0]["value"][1])
    # 2. a short bounded burst: 48 valid, 12 refused
    burst = [requests["valid"]] * 48 + [requests["empty"], requests["not_image"]] * 6
    assert send(server_url, burst) == {200: 48, 400: 12}
    wait_for(prometheus, f"sum(rakuten_predictions_total{{{selector}}})", before + 48)
    time.sleep(3)  # a few more scrapes: rates over the burst, not just its edge

    dashboard = json.loads((CHART / "dashboards" / "rakuten-serving.json").read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = grafana_to_promql(target["expr"], isvc_name)
            result = prometheus.query(expr)["result"]  # raises on any query error
            if not result:
                empty.append(f"{panel['title']} [{target['legendFormat']}]: {expr}")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            result = prometheus.query(grafana_to_promql(variable["query"]["query"], isvc_name))["result"]
            assert [r["metric"][variable["name"]] for r in result] == [NAMESPACE if variable["name"] == "namespace"
                                                                      else isvc_name], variable["name"]
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    # spot values: what the burst did must show
    def value(expr: str) -> float:
        result = prometheus.query(grafana_to_promql(expr, isvc_name))["result"]
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    assert value(f"sum(increase(rakuten_rejected_requests_total{{{selector}}}[5m]))") > 0
    reasons = prometheus.query(f"sum by (reason) (rakuten_rejected_requests_total{{{selector}}})")["result"]
    # the burst's two kinds of refusal (other tests may have added their own on this shared server)
    assert {"missing_input", "image_not_decodable"} <= {r["metric"]["reason"] for r in reasons}, reasons
    assert value(f"count(rakuten_model_info{{{selector}}})") == 1
    assert value(f"sum(up{{{selector}}})") == 1

    # every alert expression evaluates; on this traffic (20 % refused, no 5xx, server up) the
    # rejection alert's condition holds and the error and down alerts' do not (the latency ones
    # depend on how busy this machine is: evaluated, not asserted)
    rules = [r for g in one(chart_objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    firing = set()
    for rule in rules:
        if prometheus.query(rule["expr"])["result"]:
            firing.add(rule["alert"])
        body = re.sub(r"\s*>\s*[0-9.]+\s*$", "", rule["expr"].strip())
        if body != rule["expr"].strip():  # the quantity behind the threshold is defined
            assert prometheus.query(body)["result"], f"{rule['alert']}: no data for {body}"
    assert "RakutenHighRejectionRate" in firing and not firing & {"RakutenHighServerErrorRate", "RakutenPredictorDown"}, firing

    # Prometheus itself loaded and evaluated the rule file without errors
    deadline = time.monotonic() + 15
    while True:
        groups = prometheus.api("rules")["data"]["groups"]
        evaluated = [r for g in groups for r in g["rules"]]
        if len(evaluated) == len(rules) and all(r.get("lastEvaluation", "").startswith("20") for r in evaluated):
            break
        assert time.monotonic() < deadline, groups
        time.sleep(1)
    assert all(r["health"] == "ok" for r in evaluated), [(r["name"], r.get("lastError")) for r in evaluated]
    pending = {r["name"] for r in evaluated if r.get("state") in ("pending", "firing")}
    assert "RakutenHighRejectionRate" in pending and not pending & {"RakutenHighServerErrorRate", "RakutenPredictorDown"}, pending
