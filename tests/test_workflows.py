"""The GitHub workflows parse, pin their actions and run the project's own entry points."""
from __future__ import annotations

import re

import pytest

from tests.support.cluster_files import WORKFLOWS, load_workflow

pytestmark = pytest.mark.helm


def test_workflows_parse_and_pin_their_actions():
    paths = sorted(WORKFLOWS.glob("*.yml"))
    assert {p.name for p in paths} >= {"ci.yml", "e2e-kind.yml"}
    for path in paths:
        workflow = load_workflow(path)
        assert workflow.get("on") and workflow.get("jobs"), path.name
        for job in workflow["jobs"].values():
            assert job.get("timeout-minutes"), f"{path.name}: a job without a timeout"
            for step in job["steps"]:
                if "uses" in step:
                    assert re.search(r"@v\d+(\.\d+)*$|@[0-9a-f]{40}$", step["uses"]), f"unpinned action {step['uses']}"


def test_ci_workflow_runs_ci_run():
    workflow = load_workflow(WORKFLOWS / "ci.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    runs = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert "bash .ci/run" in runs


def test_e2e_workflow_python_is_the_projects():
    steps = load_workflow(WORKFLOWS / "e2e-kind.yml")["jobs"]["e2e"]["steps"]
    python = [s for s in steps if s.get("uses", "").startswith("actions/setup-python")]
    assert python and python[0]["with"]["python-version"] == "3.11"
