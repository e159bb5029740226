"""Serving benchmark of rakuten-classifier (ceiling, served, cold start): see ``benchmarks/serving/cli.py``.

    python benchmarks/serving_benchmark.py --model-uri model-store/rakuten-classifier [--quick] [--help]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.serving`

from benchmarks.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
