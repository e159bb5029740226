"""Helpers shared by the tests: real server processes, helm, Prometheus, network policies, the
Kubernetes API stand-in, S3 and command runners. Fixtures live in conftest.py files; helpers here."""
