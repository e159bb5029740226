"""CPU budget from the container's limit: fake cgroup files in a tmp dir (v1 and v2), the
downward-API variable, and the thread counts both entry points derive from it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rakuten_common import cpu
from rakuten_common.cpu import CpuBudget, cgroup_limit, cpu_budget, parse_quantity
from tests.support.servers import REPO


@pytest.fixture
def usable(monkeypatch):
    """Pretend the process may run on 16 CPUs (a big node), whatever this machine has."""
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 16)
    return 16


def cgroup_v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text + "\n")
    return root


def cgroup_v1(root: Path, quota: str, period: str, folder: str = "cpu,cpuacct") -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / folder / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.parametrize("text, cores", [("2", 2.0), ("1.5", 1.5), ("500m", 0.5), ("2000m", 2.0), (" 4 ", 4.0)])
def test_parse_quantity(text, cores):
    assert parse_quantity(text) == pytest.approx(cores)


@pytest.mark.parametrize("text", ["", "0", "-1", "two", "1Gi", "nan", "infm"])
def test_parse_quantity_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_cgroup_v2_quota(tmp_path):
    assert cgroup_limit(cgroup_v2(tmp_path / "a", "200000 100000")) == 2.0
    assert cgroup_limit(cgroup_v2(tmp_path / "b", "150000 100000")) == 1.5
    assert cgroup_limit(cgroup_v2(tmp_path / "c", "max 100000")) is None
    assert cgroup_limit(cgroup_v2(tmp_path / "d", "garbage")) is None


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path, folder):
    assert cgroup_limit(cgroup_v1(tmp_path / "a", "300000", "100000", folder)) == 3.0
    assert cgroup_limit(cgroup_v1(tmp_path / "b", "-1", "100000", folder)) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_limit(tmp_path) is None


def test_budget_follows_the_cgroup_quota_not_the_node(tmp_path, usable):
    budget = cpu_budget({}, cgroup_v2(tmp_path, "200000 100000"))
    assert budget == CpuBudget(2, "cgroup quota 2")
    assert cpu_budget({}, cgroup_v1(tmp_path / "v1", "50000", "100000")).cpus == 1  # 0.5 CPU -> 1 thread
    assert cpu_budget({}, cgroup_v2(tmp_path / "v2", "150000 100000")).cpus == 2  # rounded up


def test_downward_api_variable_wins_over_the_cgroup(tmp_path, usable):
    root = cgroup_v2(tmp_path, "800000 100000")
    assert cpu_budget({"CPU_LIMIT": "3"}, root) == CpuBudget(3, "CPU_LIMIT=3")
    assert cpu_budget({"CPU_LIMIT": "1500m"}, root).cpus == 2
    # A value that is not a quantity is ignored (with a warning), the cgroup decides.
    assert cpu_budget({"CPU_LIMIT": "lots"}, root).cpus == 8


def test_budget_never_exceeds_the_usable_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 2)
    budget = cpu_budget({"CPU_LIMIT": "6"}, tmp_path)
    assert budget.cpus == 2 and "capped" in budget.source
    assert cpu_budget({}, tmp_path) == CpuBudget(2, "no CPU limit: the CPUs this process may run on")


PROBE = r"""
import json, sys
which = sys.argv[1]
if which == "server":
    from model_server.settings import parse_settings
    s = parse_settings(sys.argv[2:])
    print(json.dumps([s.preprocess_workers, s.tf_intra_op_threads, s.tf_inter_op_threads]))
else:
    from training_job.__main__ import parse_config
    c = parse_config(sys.argv[2:])
    print(json.dumps([c.image_workers, c.tf_intra_op_threads, c.tf_inter_op_threads]))
"""


def thread_counts(which: str, env: dict[str, str], *args: str) -> list[int]:
    clean = {k: v for k, v in os.environ.items()
             if k not in {"CPU_LIMIT", "PREPROCESS_WORKERS", "TF_INTRA_OP_THREADS", "TF_INTER_OP_THREADS"}}
    done = subprocess.run([sys.executable, "-c", PROBE, which, *args], env={**clean, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.process
@pytest.mark.parametrize("which", ["server", "training"])
def test_entrypoints_size_their_threads_from_the_limit_and_flags_override(which):
    """As the chart runs them: CPU_LIMIT from the downward API (limits.cpu). This machine has
    more usable CPUs than 1, so a limit of 1 must show up as 1 everywhere."""
    assert thread_counts(which, {"CPU_LIMIT": "1"}) == [1, 1, 1]
    if which == "server":
        flags = ["--preprocess_workers=3", "--tf_intra_op_threads=2", "--tf_inter_op_threads=1"]
        env = {"CPU_LIMIT": "1", "PREPROCESS_WORKERS": "5"}
        assert thread_counts(which, env, *flags[1:]) == [5, 2, 1]
        assert thread_counts(which, env, *flags) == [3, 2, 1]
    else:
        assert thread_counts(which, {"CPU_LIMIT": "1", "TF_INTER_OP_THREADS": "4"},
                             "--tf-intra-op-threads=3") == [1, 3, 4]


@pytest.mark.process
def test_configure_tensorflow_sets_both_pools_before_any_op():
    code = ("from rakuten_common.cpu import configure_tensorflow; import tensorflow as tf;"
            "configure_tensorflow(3, 2);"
            "threads = tf.config.threading;"
            "print(threads.get_intra_op_parallelism_threads(), threads.get_inter_op_parallelism_threads())")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["3", "2"]


@pytest.mark.process
def test_help_names_the_limit_as_the_default():
    done = subprocess.run([sys.executable, "-m", "model_server", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CPU_LIMIT": "1"})
    assert done.returncode == 0
    assert "--tf_intra_op_threads" in done.stdout and "the CPU limit (CPU_LIMIT" in done.stdout
    done = subprocess.run([sys.executable, "-m", "training_job", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert "--tf-intra-op-threads" in done.stdout and "TF_INTRA_OP_THREADS" in done.stdout


def test_process_cpu_seconds_reads_proc_and_says_none_for_a_gone_process():
    subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)  # a waited-for child's CPU
    own, with_children = cpu.process_cpu_seconds(os.getpid()), cpu.process_cpu_seconds(os.getpid(), with_children=True)
    assert 0 < own < with_children
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert cpu.process_cpu_seconds(gone.pid) is None
