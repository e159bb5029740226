"""Open-loop load: requests sent at Poisson arrival times whatever the server does, each with a deadline.

Unlike the closed-loop client, a slow server does not slow the sender down: offered load stays
at the asked rate, as with many independent users. Each request is recorded with its outcome:

    ok       2xx with a well-formed V2 answer, within the client deadline (goodput)
    shed     503 or 429 (the server refused it; whether ``Retry-After`` came with it is kept)
    timeout  no answer within the deadline: the client gives up and closes the connection
    error    anything else (other status, malformed answer, connection refused or reset)

The senders run in ``clients`` processes (``python -m benchmarks.serving.open_loop SPEC``), each
an asyncio loop (uvloop when installed) sending pre-encoded bodies, so that the generator is
cheap enough to reach several times the server's capacity on a small machine. ``send_lag``
(actual send time minus scheduled time) shows whether it did.
"""
from __future__ import annotations

import asyncio
import json
import pickle
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from benchmarks.serving.common import (
    REPO,
    child_env,
    own_cpu_seconds,
    percentile,
    python_module,
    run_event_loop,
)
from loadtests.products import Encoded, check_answer

SHED_STATUSES = (429, 503)
OUTCOMES = ("ok", "shed", "timeout", "error")


class Record(NamedTuple):
    """One request: when it was due, how late it left, how long it took, and how it ended."""

    scheduled: float  # seconds after the sender's start
    lag: float  # seconds it left after ``scheduled``
    latency: float  # seconds from sending to the answer (or to giving up)
    outcome: str  # one of OUTCOMES
    status: int  # HTTP status, 0 without one
    retry_after: bool  # the answer carried a Retry-After header


def arrival_times(rate: float, duration: float, seed: int) -> list[float]:
    """Poisson arrivals at ``rate`` per second over ``[0, duration)``."""
    rng, times, t = random.Random(seed), [], 0.0
    if rate <= 0:
        return times
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return times
        times.append(t)


async def drive(url: str, requests: list[Encoded], schedule: list[float], deadline: float, top_k: int,
                extra_headers: dict[str, str] | None = None) -> tuple[list[Record], dict[str, int]]:
    """Send ``requests`` (cycled) at the ``schedule`` offsets; return one ``Record`` per request and error kinds."""
    import aiohttp

    loop = asyncio.get_running_loop()
    records: list[Record | None] = [None] * len(schedule)
    errors: dict[str, int] = {}
    extra = extra_headers or {}
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=deadline)) as session:
        started = loop.time()

        async def one(i: int, due: float) -> None:
            encoded = requests[i % len(requests)]
            sent = loop.time()
            status, retry_after, outcome, problem = 0, False, "error", None
            try:
                async with session.post(url, data=encoded.body, headers={**encoded.headers, **extra}) as response:
                    status, retry_after = response.status, "Retry-After" in response.headers
                    body = await response.read()
                if 200 <= status < 300:
                    problem = check_answer(json.loads(body), encoded.rows, top_k)
                    outcome = "ok" if problem is None else "error"
                elif status in SHED_STATUSES:
                    outcome = "shed"
                else:
                    problem = f"HTTP {status}: {body[:120]!r}"
            except TimeoutError:  # aiohttp's deadline (asyncio.TimeoutError is TimeoutError)
                outcome = "timeout"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"[:160]
            if problem:
                errors[problem] = errors.get(problem, 0) + 1
            records[i] = Record(due, sent - started - due, loop.time() - sent, outcome, status, retry_after)

        tasks = []
        for i, due in enumerate(schedule):
            delay = started + due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(i, due)))
        await asyncio.gather(*tasks)
    return [r for r in records if r is not None], errors


@dataclass
class LoadSummary:
    """The client's view of one open-loop run (bookkeeping only: no server figures)."""

    offered_rps: float
    duration_s: float
    sent: int = 0
    sent_rps: float = 0.0  # requests sent / time taken to send them (below offered when the senders lag)
    send_lag_p99_ms: float = float("nan")
    ok: int = 0
    goodput_rps: float = 0.0
    shed: int = 0
    shed_with_retry_after: int = 0
    shed_p50_ms: float = float("nan")
    shed_p99_ms: float = float("nan")
    timeouts: int = 0
    errors: int = 0
    admitted_p50_ms: float = float("nan")
    admitted_p99_ms: float = float("nan")
    sender_cpu_cores: float = float("nan")  # CPU the sender processes used while sending, per second
    error_kinds: dict[str, int] = field(default_factory=dict)


def summarise(records: list[Record], offered_rps: float, duration: float,
              error_kinds: dict[str, int] | None = None) -> LoadSummary:
    """Counts, rates and latency percentiles of one run's records."""
    by_outcome: dict[str, list[Record]] = {o: [] for o in OUTCOMES}
    for record in records:
        by_outcome[record.outcome].append(record)

    def ms(rows: list[Record], q: float) -> float:
        return 1000 * percentile(sorted(r.latency for r in rows), q)

    ok, shed = by_outcome["ok"], by_outcome["shed"]
    # a sender that falls behind stretches its sending past ``duration``: the rate it really reached
    sending = max([duration] + [r.scheduled + r.lag for r in records])
    return LoadSummary(
        offered_rps=offered_rps, duration_s=duration, sent=len(records), sent_rps=len(records) / sending,
        send_lag_p99_ms=1000 * percentile(sorted(r.lag for r in records), 0.99),
        ok=len(ok), goodput_rps=len(ok) / duration, shed=len(shed),
        shed_with_retry_after=sum(r.retry_after for r in shed), shed_p50_ms=ms(shed, 0.5), shed_p99_ms=ms(shed, 0.99),
        timeouts=len(by_outcome["timeout"]), errors=len(by_outcome["error"]),
        admitted_p50_ms=ms(ok, 0.5), admitted_p99_ms=ms(ok, 0.99),
        error_kinds=dict(sorted((error_kinds or {}).items(), key=lambda kv: -kv[1])[:5]))


# -- the sender processes --------------------------------------------------------------------
def _sender(spec: dict) -> dict:
    with open(spec["requests_file"], "rb") as f:
        requests = pickle.load(f)[spec["payload"]]
    schedule = arrival_times(spec["rate"], spec["duration"], spec["seed"])
    headers = {spec["timeout_header"]: f"{spec['deadline']:g}"} if spec.get("timeout_header") else {}
    print("ready", flush=True)  # imports done: wait for the common start time
    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before, started = own_cpu_seconds(), time.monotonic()
    records, errors = run_event_loop(drive(spec["url"], requests, schedule, spec["deadline"], spec["top_k"], headers))
    return {"records": records, "errors": errors,
            "cpu_cores": (own_cpu_seconds() - cpu_before) / (time.monotonic() - started)}


def main(argv: list[str] | None = None) -> int:
    """Sender process: read the spec, say ready, start at the time read from stdin, write the records."""
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    Path(spec["results_file"]).write_text(json.dumps(_sender(spec)))
    return 0


def run_open_loop(workdir: Path, url: str, rate: float, duration: float, deadline: float, *, clients: int,
                  payload: str, top_k: int, seed: int, timeout_header: str = "", label: str = "load") -> LoadSummary:
    """Offer ``rate`` req/s for ``duration`` s from ``clients`` processes started together; summarise them all."""
    specs, senders = [], []
    for i in range(clients):
        spec = {"url": url, "rate": rate / clients, "duration": duration, "deadline": deadline, "top_k": top_k,
                "seed": seed * 1000 + i, "payload": payload, "timeout_header": timeout_header,
                "requests_file": str(workdir / "requests.pickle"),
                "results_file": str(workdir / f"open-loop-{label}-{i}.results.json")}
        spec_path = workdir / f"open-loop-{label}-{i}.json"
        spec_path.write_text(json.dumps(spec))
        with open(workdir / f"open-loop-{label}-{i}.log", "wb") as stderr:
            senders.append(subprocess.Popen(python_module("benchmarks.serving.open_loop", str(spec_path)),
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            cwd=REPO, env=child_env(), text=True))
        specs.append(spec)
    try:
        for sender in senders:
            if sender.stdout.readline().strip() != "ready":
                raise RuntimeError(f"open-loop sender exited with {sender.wait()} (see {workdir})")
        start_at = time.time() + 0.2
        for sender in senders:
            sender.stdin.write(f"{start_at}\n")
            sender.stdin.flush()
        for sender in senders:
            if sender.wait(timeout=duration + deadline + 120) != 0:
                raise RuntimeError(f"open-loop sender failed ({sender.returncode}); log in {workdir}")
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    records, errors, cpu_cores = [], {}, 0.0
    for spec in specs:
        result = json.loads(Path(spec["results_file"]).read_text())
        records += [Record(*row) for row in result["records"]]
        cpu_cores += result["cpu_cores"]
        for kind, n in result["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    summary = summarise(records, rate, duration, errors)
    summary.sender_cpu_cores = cpu_cores
    return summary


if __name__ == "__main__":
    sys.exit(main())
