"""Fixtures of the cluster tests: the kind cluster `make cluster-up` prepared, reached with the
kubernetes Python client. Without it (no context, no API server) every test here is skipped."""
from __future__ import annotations

import pytest

from tests.e2e.cluster import Cluster, api_client, unreachable


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    target = Cluster()
    if problem := unreachable(target):
        pytest.skip(f"{problem}: `make e2e` creates the cluster and runs these tests")
    return target


@pytest.fixture(scope="session")
def k8s(cluster):
    """The typed APIs the tests use, bound to the cluster's context."""
    from kubernetes import client

    api = api_client(cluster.context)

    class Apis:
        core = client.CoreV1Api(api)
        batch = client.BatchV1Api(api)
        custom = client.CustomObjectsApi(api)
        extensions = client.ApiextensionsV1Api(api)
        autoscaling = client.AutoscalingV2Api(api)
        admission = client.AdmissionregistrationV1Api(api)

    return Apis
