"""Overload benchmark (capacity, then open loop at 1x and 4x): see ``benchmarks/serving/overload.py``.

    python benchmarks/overload.py --model-uri model-store/rakuten-classifier [--quick] [--help]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.serving`

from benchmarks.serving.overload import main

if __name__ == "__main__":
    sys.exit(main())
