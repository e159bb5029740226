"""Benchmarks of the serving stack (run from the repository root; see docs/performance.md)."""
