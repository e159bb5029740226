"""Pass/fail verdict of a load test run.

The run fails when the failure ratio (all requests) or the p95 / p99 latency of the inference
requests (entries whose name starts with ``infer``; probes and metadata are not counted) exceed
their thresholds, when no inference request was made at all, or when the scenario code raised.
The verdict itself is plain arithmetic on an ``Observed`` (no Locust import at module level).
"""
from __future__ import annotations

from dataclasses import dataclass

INFER_PREFIX = "infer"


@dataclass(frozen=True)
class Thresholds:
    max_fail_ratio: float = 0.01
    max_p95_ms: float = 1000.0
    max_p99_ms: float = 0.0  # 0: not checked
    min_requests: int = 1


@dataclass(frozen=True)
class Observed:
    requests: int            # all requests
    failures: int            # all failures
    infer_requests: int      # inference requests (successful or not)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    exceptions: int = 0      # errors raised by the scenario code

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def observe(stats, exceptions: int = 0) -> Observed:
    """An ``Observed`` from Locust's ``RequestStats`` (inference entries merged for the percentiles)."""
    from locust.stats import StatsEntry

    infer = StatsEntry(stats, f"{INFER_PREFIX} (all)", "POST")
    for entry in stats.entries.values():
        if entry.name.startswith(INFER_PREFIX):
            infer.extend(entry)
    p50, p95, p99 = ((infer.get_response_time_percentile(q) or 0.0) if infer.num_requests else 0.0
                     for q in (0.5, 0.95, 0.99))
    return Observed(stats.total.num_requests, stats.total.num_failures, infer.num_requests, p50, p95, p99, exceptions)


def breaches(seen: Observed, limits: Thresholds) -> list[str]:
    """What exceeded its threshold (empty when the run passes)."""
    found = []
    if seen.infer_requests < limits.min_requests:
        found.append(f"only {seen.infer_requests} inference requests (at least {limits.min_requests} expected)")
    if seen.requests and seen.fail_ratio > limits.max_fail_ratio:
        found.append(f"failure ratio {seen.fail_ratio:.2%} > {limits.max_fail_ratio:.2%} "
                     f"({seen.failures} of {seen.requests})")
    if seen.infer_requests:
        for name, value, limit in (("p95", seen.p95_ms, limits.max_p95_ms), ("p99", seen.p99_ms, limits.max_p99_ms)):
            if limit > 0 and value > limit:
                found.append(f"inference {name} {value:.0f} ms > {limit:g} ms")
    if seen.exceptions:
        found.append(f"{seen.exceptions} exception(s) in the scenario code")
    return found


def summary(seen: Observed) -> str:
    if not seen.infer_requests:
        return f"no inference request ({seen.requests} requests, {seen.failures} failures)"
    return (f"{seen.infer_requests} inference requests, {seen.failures} failures of {seen.requests} requests "
            f"({seen.fail_ratio:.2%}), inference p50 {seen.p50_ms:.0f} ms, p95 {seen.p95_ms:.0f} ms, "
            f"p99 {seen.p99_ms:.0f} ms")
