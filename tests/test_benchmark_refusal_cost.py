"""benchmarks/refusal_cost.py runs the real protocol and gate with admission full and prints its figures."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.servers import REPO


@pytest.mark.process
def test_the_refusal_cost_benchmark_refuses_every_request_and_prints_three_figures():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "refusal_cost.py"), "--refusals", "300"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    figures = re.findall(r"^  (.+?)\s+(\d+\.\d) µs$", done.stdout, re.MULTILINE)
    assert [name for name, _ in figures] == ["an access line for every refusal",
                                             "default: at most 10 lines a second", "access log off"], done.stdout
    assert all(float(micros) > 0 for _, micros in figures)
