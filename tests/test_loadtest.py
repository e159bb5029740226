"""The Locust load test: real ``locust`` runs of ``loadtests/locustfile.py`` against a real model
server (short, headless, bounded), its thresholds, answer checks and load profiles.

Locust is only ever run as a subprocess: importing it here would gevent-monkey-patch the test
process (the modules imported below do not import Locust)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.servers import REPO

LOCUST = Path(sys.executable).with_name("locust")


def run_locust(server_url: str, out_dir: Path, *extra: str, run_time: str = "6s") -> subprocess.CompletedProcess:
    """One headless run with the project's config file, a few users, reports into ``out_dir``."""
    command = [str(LOCUST), "--config", str(REPO / "loadtests" / "locust.conf"),
               "--locustfile", str(REPO / "loadtests" / "locustfile.py"), "--host", server_url, "--headless",
               "--users", "3", "--spawn-rate", "3", "--run-time", run_time, "--think-time", "0.1",
               "--products", "12", "--csv", str(out_dir / "locust"), "--html", str(out_dir / "report.html"), *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def stats_rows(out_dir: Path) -> dict[str, dict[str, str]]:
    with open(out_dir / "locust_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.e2e
@pytest.mark.parametrize("payload", ["base64", "binary"])
def test_smoke_run_against_the_server_passes(server_url, sample_dir, tmp_path, payload):
    done = run_locust(server_url, tmp_path, "--payload", payload, "--data-dir", str(sample_dir))
    assert done.returncode == 0, done.stderr[-4000:]
    rows = stats_rows(tmp_path)
    total = rows["Aggregated"]
    assert int(total["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()[:2000]
    assert int(total["Request Count"]) >= 10
    assert int(rows["infer 1 product"]["Request Count"]) >= 5
    assert "Thresholds met" in done.stderr
    assert (tmp_path / "report.html").stat().st_size > 10_000


@pytest.mark.e2e
def test_a_threshold_breach_makes_the_run_fail(server_url, tmp_path):
    done = run_locust(server_url, tmp_path, "--max-p95-ms", "0.001", run_time="3s")
    assert done.returncode == 1, done.stderr[-4000:]
    assert "Threshold breached: inference p95" in done.stderr
    assert int(stats_rows(tmp_path)["Aggregated"]["Failure Count"]) == 0  # the requests themselves were fine


@pytest.mark.e2e
def test_refused_requests_are_failures_and_fail_the_run(server_url, tmp_path):
    done = run_locust(server_url, tmp_path, "--top-k", "28", run_time="3s")  # the server accepts 1..27
    assert done.returncode == 1, done.stderr[-4000:]
    assert "Threshold breached: failure ratio" in done.stderr
    rows = stats_rows(tmp_path)
    assert int(rows["infer 1 product"]["Failure Count"]) == int(rows["infer 1 product"]["Request Count"]) > 0
    assert "HTTP 400" in (tmp_path / "locust_failures.csv").read_text()


def test_answers_are_checked():
    from loadtests.products import check_answer

    def answer(codes, probabilities, shape):
        return {"outputs": [{"name": "prdtypecode", "datatype": "INT64", "shape": shape, "data": codes},
                            {"name": "probability", "datatype": "FP32", "shape": shape, "data": probabilities}]}

    assert check_answer(answer([2583, 10, 40, 50], [0.9, 0.1, 0.6, 0.3], [2, 2]), rows=2, top_k=2) is None
    assert "shape" in check_answer(answer([2583, 10], [0.9, 0.1], [1, 2]), rows=2, top_k=1)
    assert "unknown prdtypecode" in check_answer(answer([7], [0.9], [1, 1]), rows=1, top_k=1)
    assert "decreasing" in check_answer(answer([10, 40], [0.1, 0.9], [1, 2]), rows=1, top_k=2)
    assert "outside" in check_answer(answer([10], [1.5], [1, 1]), rows=1, top_k=1)
    assert check_answer({"error": "boom"}, rows=1, top_k=1).startswith("no prdtypecode")


def test_threshold_verdicts():
    from loadtests.thresholds import Observed, Thresholds, breaches

    fine = Observed(requests=100, failures=1, infer_requests=98, p50_ms=40, p95_ms=60, p99_ms=3000)
    assert breaches(fine, Thresholds(max_fail_ratio=0.05, max_p95_ms=1000)) == []
    found = breaches(fine, Thresholds(max_fail_ratio=0.001, max_p95_ms=30, max_p99_ms=100))
    assert [b.split(" ")[:2] for b in found] == [["failure", "ratio"], ["inference", "p95"], ["inference", "p99"]]
    assert breaches(Observed(0, 0, 0, 0, 0, 0), Thresholds())[0].startswith("only 0 inference requests")
    assert breaches(Observed(10, 0, 10, 1, 1, 1, exceptions=2), Thresholds())[0].startswith("2 exception")


def test_load_profiles_are_bounded_and_the_step_profile_suits_an_autoscaler():
    from loadtests.profiles import stages_for, total_seconds

    def options(**kw):
        base = dict(load_shape="constant", num_users=4, spawn_rate=2, run_time=None, smoke_users=4,
                    step_users=8, step_seconds=120, steps=5)
        return SimpleNamespace(**{**base, **kw})

    smoke = stages_for(options(load_shape="smoke"))
    assert total_seconds(smoke) <= 60 and max(s.users for s in smoke) == 4

    step = stages_for(options(load_shape="step"))
    users = [s.users for s in step]
    peak = users.index(max(users))
    assert users[:peak + 1] == sorted(users[:peak + 1]) and max(users) == 40
    assert users[peak:] == sorted(users[peak:], reverse=True) and users[-1] < max(users)  # then scale-in
    durations = [b.until - a.until for a, b in zip([SimpleNamespace(until=0)] + step, step)]
    assert min(durations) >= 120  # each step outlasts the HPA sync period and a pod start
    assert total_seconds(step) <= 20 * 60

    assert total_seconds(stages_for(options(run_time=30))) == 30
    assert 0 < total_seconds(stages_for(options())) <= 600  # bounded even without -t
