"""Drift monitoring end to end: a real model server serving the published model (with a small
drift window), a real Prometheus scraping it and evaluating the chart's drift alerts, and the
real Locust scenarios. Under the normal mix the drift gauges stay below the chart's alert
thresholds and no drift alert is pending; under the shifted mix (one product family, English
texts, tiny grayscale photos) they cross them and Prometheus fires every drift alert. Every query
of the "Data and prediction drift" dashboard returns data.

The rules are rendered by the real helm with `for: 10s` instead of the shipped 15 minutes (the
only value changed), so that the alerts can fire within the test."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.support.helm import CHART, NAMESPACE, one, render
from tests.support.prometheus import POD, Prometheus, running_prometheus
from tests.support.servers import start_model_server
from tests.test_loadtest import run_locust
from tests.test_monitoring import grafana_to_promql

pytestmark = [pytest.mark.prometheus, pytest.mark.e2e]

WINDOW, MIN_PRODUCTS = 600, 300
FOR = "10s"
DRIFT_ALERTS = {"RakutenFeatureDrift", "RakutenPredictionDrift", "RakutenConfidenceCollapse"}
THRESHOLDS = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["prometheusRule"]["drift"]


@pytest.fixture(scope="module")
def drift_server(published, s3, artifacts_dir, tmp_path_factory) -> str:
    """A server of its own: a window small enough for a short test (the shared one keeps the default)."""
    server, url = start_model_server(
        published.uri, artifacts_dir / "model_server_drift.log",
        env={**s3.env, "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("model-cache-drift"))},
        extra_args=[f"--drift_window_products={WINDOW}", f"--drift_min_products={MIN_PRODUCTS}", "--access_log=false"])
    yield url
    server.stop()


@pytest.fixture(scope="module")
def chart(tools) -> list[dict]:
    return render(tools, sets=[f"monitoring.prometheusRule.drift.for={FOR}"])


@pytest.fixture(scope="module")
def prometheus(drift_server, chart, tmp_path_factory):
    isvc = one(chart, "InferenceService")["metadata"]["name"]
    groups = one(chart, "PrometheusRule")["spec"]["groups"]
    with running_prometheus(tmp_path_factory.mktemp("prometheus-drift"), drift_server, isvc, groups) as running:
        yield running


def gauges(prometheus: Prometheus) -> dict[str, float]:
    """The drift gauges as Prometheus holds them now, keyed by name and distinguishing label."""
    values = {}
    for name, label in (("rakuten_drift_psi", "feature"), ("rakuten_drift_prediction_js_distance", "reference"),
                        ("rakuten_drift_top1_confidence_mean", "source"),
                        ("rakuten_drift_low_confidence_share", "source"), ("rakuten_drift_window_products", None)):
        for result in prometheus.query(f'{name}{{namespace="{NAMESPACE}"}}')["result"]:
            key = f"{name}{{{result['metric'][label]}}}" if label else name
            values[key] = float(result["value"][1])
    return values


def window_after(prometheus: Prometheus, since: float, timeout: float = 30) -> dict[str, float]:
    """Bounded wait for a scrape taken after ``since`` (a full window by then); its gauges."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(f'timestamp(rakuten_drift_window_products{{namespace="{NAMESPACE}"}})')["result"]
        if result and float(result[0]["value"][1]) > since:
            values = gauges(prometheus)
            assert values["rakuten_drift_window_products"] == WINDOW, values
            return values
        assert time.monotonic() < deadline, f"no full drift window scraped: {result}"
        time.sleep(0.5)


def drift_alerts(prometheus: Prometheus) -> dict[str, list[dict]]:
    alerts = prometheus.api("alerts")["data"]["alerts"]
    return {name: [a for a in alerts if a["labels"]["alertname"] == name] for name in DRIFT_ALERTS}


def locust(url: str, out_dir, *extra: str) -> None:
    out_dir.mkdir()
    done = run_locust(url, out_dir, "--users", "4", "--spawn-rate", "4", "--think-time", "0", "--products", "600",
                      *extra, run_time="12s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Thresholds met" in done.stderr


def test_drift_gauges_and_alerts_under_normal_and_shifted_traffic(drift_server, prometheus, chart, tmp_path):
    # 1. the normal mix: generated products like the training ones (never the same products)
    locust(drift_server, tmp_path / "normal")
    normal = window_after(prometheus, time.time())
    print("\nnormal mix:", json.dumps(normal, indent=1))
    time.sleep(12)  # longer than the rules' `for`: a condition that held would now be firing
    assert all(not found for found in drift_alerts(prometheus).values()), drift_alerts(prometheus)
    psi = {k: v for k, v in normal.items() if k.startswith("rakuten_drift_psi")}
    assert len(psi) == 10 and max(psi.values()) < THRESHOLDS["psi"], psi
    assert normal["rakuten_drift_prediction_js_distance{class_prior}"] < THRESHOLDS["jsDistance"]
    confidence_drop = (normal["rakuten_drift_top1_confidence_mean{reference}"]
                       - normal["rakuten_drift_top1_confidence_mean{window}"])
    assert confidence_drop < THRESHOLDS["confidenceDrop"]

    # 2. the shifted mix: the window fills with products unlike the training data
    locust(drift_server, tmp_path / "shifted", "--shift", "all")
    shifted = window_after(prometheus, time.time())
    print("shifted mix:", json.dumps(shifted, indent=1))
    for feature in ("text_oov_share", "image_width", "image_height", "image_saturation", "top1_confidence"):
        assert shifted[f"rakuten_drift_psi{{{feature}}}"] > THRESHOLDS["psi"], feature
    assert shifted["rakuten_drift_prediction_js_distance{class_prior}"] > THRESHOLDS["jsDistance"]
    assert (shifted["rakuten_drift_top1_confidence_mean{reference}"]
            - shifted["rakuten_drift_top1_confidence_mean{window}"]) > THRESHOLDS["confidenceDrop"]

    deadline = time.monotonic() + 60
    while not all(any(a["state"] == "firing" for a in found) for found in drift_alerts(prometheus).values()):
        assert time.monotonic() < deadline, drift_alerts(prometheus)
        time.sleep(1)
    alerts = drift_alerts(prometheus)
    features = {a["labels"]["feature"] for a in alerts["RakutenFeatureDrift"] if a["state"] == "firing"}
    assert {"image_width", "text_oov_share", "image_saturation"} <= features, features
    for found in alerts.values():
        for alert in found:
            assert alert["labels"]["pod"] == POD and alert["labels"]["model_version"]
            assert "{{" not in alert["annotations"]["summary"] and "1. " in alert["annotations"]["runbook"]
    print("firing:", sorted((a["labels"]["alertname"], a["labels"].get("feature", "")) for f in alerts.values()
                            for a in f if a["state"] == "firing"))

    # 3. every query of the drift dashboard answers, with data
    isvc = one(chart, "InferenceService")["metadata"]["name"]
    dashboard = json.loads((CHART / "dashboards" / "rakuten-drift.json").read_text())
    assert dashboard["title"].startswith("Data and prediction drift")
    shipped = next(o for o in chart if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"))
    assert json.loads(shipped["data"]["rakuten-drift.json"]) == dashboard  # beside rakuten-serving.json
    empty = [f"{p['title']}: {t['expr']}" for p in dashboard["panels"] for t in p.get("targets", [])
             if not prometheus.query(grafana_to_promql(t["expr"], isvc))["result"]]
    assert not empty, "drift dashboard queries without data:\n" + "\n".join(empty)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert prometheus.query(grafana_to_promql(variable["query"]["query"], isvc))["result"], variable["name"]
    rules = [r for g in one(chart, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    evaluated = [r for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]]
    assert len(evaluated) == len(rules) and all(r["health"] == "ok" for r in evaluated), evaluated
