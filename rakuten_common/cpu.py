"""How many CPUs this process may use: the container's CPU limit, not the node's core count.

A 2-CPU pod on a 16-core node sees ``os.cpu_count() == 16``; sizing thread pools (and
TensorFlow's) from that runs 16+ busy threads on a 2-CPU quota, which the kernel throttles.
The budget is read, first found wins, from:

1. ``$CPU_LIMIT``: a Kubernetes CPU quantity (``2``, ``1.5``, ``500m``), as the downward API
   fills it from ``resources.limits.cpu`` (the chart does);
2. the cgroup's quota: v2 ``cpu.max`` (``<quota> <period>``), v1 ``cpu.cfs_quota_us`` /
   ``cpu.cfs_period_us``;
3. the CPUs this process may run on (``sched_getaffinity``), else ``os.cpu_count()``.

A fractional limit is rounded up (1.5 CPUs -> 2 threads), and the result never exceeds the
CPUs the process may run on, nor falls below 1.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("rakuten.cpu")

ENV = "CPU_LIMIT"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    """Whole CPUs to size thread pools with, and where that number comes from."""

    cpus: int
    source: str

    def __str__(self) -> str:
        return f"{self.cpus} CPU{'s' if self.cpus != 1 else ''} ({self.source})"


def parse_quantity(text: str) -> float:
    """A Kubernetes CPU quantity in cores: ``2`` -> 2.0, ``1.5`` -> 1.5, ``500m`` -> 0.5."""
    value = text.strip()
    scale = 1.0
    if value.endswith("m"):
        value, scale = value[:-1], 1e-3
    cores = float(value) * scale
    if not math.isfinite(cores) or cores <= 0:
        raise ValueError(f"{text!r} is not a positive CPU quantity")
    return cores


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of the cgroup mounted at ``root``, in CPUs; None when unlimited or unknown."""
    if (text := _read(root / "cpu.max")) is not None:  # cgroup v2: "max 100000" or "200000 100000"
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):  # cgroup v1
        quota_text, period_text = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota_text is not None and period_text is not None:
            try:
                q, p = int(quota_text), int(period_text)
            except ValueError:
                return None
            return q / p if q > 0 and p > 0 else None
    return None


def usable_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_budget(environ: Mapping[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT) -> CpuBudget:
    """The whole CPUs this process should size its thread pools to (see the module docstring)."""
    environ = os.environ if environ is None else environ
    usable = usable_cpus()
    limit, source = None, None
    if text := environ.get(ENV, "").strip():
        try:
            limit, source = parse_quantity(text), f"{ENV}={text}"
        except ValueError as exc:
            logger.warning("ignoring %s: %s", ENV, exc)
    if limit is None and (quota := cgroup_limit(cgroup_root)) is not None:
        limit, source = quota, f"cgroup quota {quota:g}"
    if limit is None:
        return CpuBudget(usable, "no CPU limit: the CPUs this process may run on")
    wanted = max(1, math.ceil(limit - 1e-9))
    if wanted > usable:
        return CpuBudget(usable, f"{source}, capped at the {usable} usable CPUs")
    return CpuBudget(wanted, source)


def available_cpus() -> int:
    """``cpu_budget().cpus``: the default size of CPU-bound thread pools."""
    return cpu_budget().cpus


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Size TensorFlow's thread pools; must run before TensorFlow executes any op.

    Importing TensorFlow happens here if nothing did yet (a few seconds): call it where the
    process is about to import TensorFlow anyway, after arguments are parsed.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    logger.info("TensorFlow threads: %d intra-op, %d inter-op", intra_op_threads, inter_op_threads)


def process_cpu_seconds(pid: int, with_children: bool = False) -> float | None:
    """User + system CPU seconds of process ``pid`` from ``/proc`` (with its waited-for children's
    when ``with_children``); ``None`` where ``/proc`` cannot tell (it has exited, not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15 if with_children else 13]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None

