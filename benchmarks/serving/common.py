"""Measuring helpers shared by the benchmarks: percentiles, CPU and memory from /proc, the machine."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import platform
import resource
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path

from rakuten_common import cpu

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("rakuten.benchmark")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a child process: this checkout first on ``PYTHONPATH``, TensorFlow quiet."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2", **(extra or {})}


def python_module(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``python -m module`` from the repository root; raise with its stderr if it fails."""
    done = subprocess.run(python_module(module, *args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=child_env())
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@contextlib.contextmanager
def cpus(allowed: tuple[int, ...]):
    """Run the block (and the processes it starts) on ``allowed`` CPUs only; all of them if empty."""
    before = os.sched_getaffinity(0)
    if allowed:
        os.sched_setaffinity(0, allowed)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_set_name(allowed: tuple[int, ...]) -> str:
    """``allowed`` as ``cpus`` reads it, for a report: 'CPU 0,1', or 'any CPU' when empty."""
    return "CPU " + ",".join(map(str, allowed)) if allowed else "any CPU"


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its finished children), in seconds (NaN once it has exited)."""
    seconds = cpu.process_cpu_seconds(pid, with_children=True)
    return float("nan") if seconds is None else seconds


def process_memory_bytes(pid: int) -> dict[str, int]:
    """``{"rss": VmRSS, "peak": VmHWM}`` of a process in bytes (empty once it has exited)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return out


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_event_loop(coroutine):
    """Run ``coroutine`` on uvloop when installed (a cheaper client), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def machine_info() -> dict:
    """CPU, usable cores, versions and load average: what a reader needs to weigh the figures."""
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions: dict[str, str | None] = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "kserve", "numpy", "pillow", "aiohttp", "locust"):
        name = dist.replace("-cpu", "")
        try:
            versions[name] = versions.get(name) or metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions.setdefault(name, None)
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(), "versions": versions,
            "date": datetime.now().isoformat(timespec="seconds")}


def machine_line(machine: dict) -> str:
    return (f"machine: {machine['cpu']}, {machine['usable_cpus']}/{machine['logical_cpus']} CPUs usable, "
            f"python {machine['python']}, tensorflow {machine['versions'].get('tensorflow')}, "
            f"kserve {machine['versions'].get('kserve')}, load average at start "
            f"{', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}")


def json_safe(value):
    """NaN -> None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def table(headers: list[str], rows: list[list], title: str) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths)), line]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in cells[1:]]
    return "\n".join(out + [line, ""])


def fmt(value, digits: int = 1) -> str:
    """A number with ``digits`` decimals, ``-`` when missing."""
    if is_missing(value):
        return "-"
    return f"{value:.{digits}f}"
