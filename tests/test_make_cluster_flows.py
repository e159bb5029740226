"""What a user does with the make targets (issue 17, items 14-16 and the Knative e2e run), as
`make -n` dry runs: deploys keep the user's values file, batch predictions run on the cluster and
come back as a local CSV without retraining, Python targets build the venv first, `make train`
trains from S3 as it is, `make upload-data` can create the bucket, `make e2e E2E_MODE=serverless`."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from tests.support.cluster_files import CLUSTER_MK, DOCS, REPO, WORKFLOWS, code_of_markdown, load_workflow, recipe

pytestmark = pytest.mark.helm

KIND_VALUES = "charts/rakuten-serving/ci/kind-values.yaml"


@pytest.fixture(scope="module", autouse=True)
def need_make():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")


@pytest.fixture
def venv(tmp_path):
    """A VENV whose stamp is newer than the requirements: make sees it as up to date."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / ".installed").touch()
    return str(tmp_path / "venv")


def dry_run(*args: str) -> str:
    done = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---- 14. deploys keep the user's values ---------------------------------------------------------

def test_deploy_applies_the_values_file_after_the_scenario_and_before_one_off_args(tmp_path, venv):
    values = tmp_path / "mine.yaml"
    values.write_text("training:\n  imageSize: 128\n")
    out = dry_run("deploy", f"VENV={venv}", f"DEPLOY_VALUES={values}", "DEPLOY_ARGS=--set x=1")
    helm = out[out.index("upgrade --install"):]
    assert helm.index(f"-f '{KIND_VALUES}'") < helm.index(f"-f '{values}'") < helm.index("--set x=1")
    absent = dry_run("deploy", f"VENV={venv}", f"DEPLOY_VALUES={tmp_path / 'none.yaml'}")
    assert "none.yaml'" not in absent[absent.index("upgrade --install"):]


def test_the_values_file_is_named_in_the_docs_and_kept_out_of_git():
    assert "DEPLOY_VALUES ?= values-local.yaml" in CLUSTER_MK.read_text()
    assert "/values-local.yaml" in (REPO / ".gitignore").read_text().splitlines()
    docs = DOCS.read_text()
    assert "values-local.yaml" in docs and "make train-job" in docs
    # the real-data recipe no longer retrains through DEPLOY_ARGS (an upgrade trains only when asked)
    assert "make deploy DEPLOY_ARGS=\"--set training.data.uri" not in docs


# ---- 15. batch predictions on the cluster, without retraining -----------------------------------

def test_batch_job_instantiates_the_batch_cronjob_and_says_where_the_csv_is():
    text = recipe(CLUSTER_MK, "batch-job")
    assert "get cronjobs" in text and "app.kubernetes.io/component=batch-predict" in text
    assert 'create job "$$job" --from="$$cronjob"' in text and "*Failed*" in text and "*Complete*" in text
    assert "make fetch-predictions PREDICTIONS_URI=" in text
    assert "upgrade" not in text, "no helm upgrade, so no retraining"


def test_fetch_predictions_uses_the_training_users_key_through_a_port_forward(venv):
    out = dry_run("fetch-predictions", f"VENV={venv}", "PREDICTIONS=build/p.csv")
    assert "port-forward --address 127.0.0.1" in out and "rakuten-serving/s3-user=training" in out
    assert "$FETCH_PREDICTIONS_PY" in out and "'build/p.csv'" in out


def fetch_script() -> str:
    done = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "print-fetch"],
                          input="print-fetch:\n\t@printenv FETCH_PREDICTIONS_PY\n", cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_fetch_predictions_script_downloads_the_newest_csv(s3, tmp_path):
    """The download half of `make fetch-predictions`, against the S3 stand-in (moto)."""
    from tests.support.s3 import DATASETS_BUCKET

    client = s3.client()
    prefix = f"s3://{DATASETS_BUCKET}/fetch-test/"
    script, out = fetch_script(), tmp_path / "results" / "predictions.csv"

    def fetch(uri: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, uri, prefix, str(out)], capture_output=True, text=True,
                              timeout=60, env={**s3.env, "PATH": "/usr/bin:/bin"})

    empty = fetch("")
    assert empty.returncode != 0 and "no CSV under" in empty.stderr and "make batch-job" in empty.stderr
    client.put_object(Bucket=DATASETS_BUCKET, Key="fetch-test/batch-old.csv", Body=b"productid,prdtypecode\n1,10\n")
    time.sleep(1.1)  # LastModified has a one-second resolution
    client.put_object(Bucket=DATASETS_BUCKET, Key="fetch-test/batch-new.csv",
                      Body=b"productid,prdtypecode\n1,10\n2,40\n")
    newest = fetch("")
    assert newest.returncode == 0, newest.stderr
    assert out.read_text().count("\n") == 3 and "batch-new.csv" in newest.stdout and "(2 products)" in newest.stdout
    chosen = fetch(f"{prefix}batch-old.csv")
    assert chosen.returncode == 0 and out.read_text().count("\n") == 2


def test_docs_show_both_batch_targets():
    used = code_of_markdown(DOCS.read_text())
    assert "make batch-job" in used and "make fetch-predictions" in used


# ---- 16. the venv first; S3 data as it is; --create-bucket ------------------------------------

@pytest.mark.parametrize("target", ["call-model", "cluster-upload-data", "fetch-predictions", "e2e-test", "e2e",
                                    "train", "upload-data", "batch-predict"])
def test_targets_running_the_venvs_python_build_it_first(tmp_path, target):
    out = dry_run(target, f"VENV={tmp_path / 'fresh'}", "DATASET_SRC=/data", "KIND=true")
    assert f"-m venv {tmp_path / 'fresh'}" in out, f"make {target} on a fresh clone would run a missing .venv"


def test_train_from_s3_generates_no_sample(venv):
    out = dry_run("train", f"VENV={venv}", "DATA_DIR=s3://rakuten-datasets/rakuten")
    assert "training_job.sample_data" not in out
    assert "-m training_job --data-dir s3://rakuten-datasets/rakuten" in out
    assert "training_job.sample_data --out data/sample" in dry_run("train", f"VENV={venv}", "DATA_DIR=data/sample")


def test_upload_data_can_create_the_bucket(venv):
    from training_job import upload_data

    out = dry_run("upload-data", f"VENV={venv}", "UPLOAD_ARGS=--create-bucket")
    assert "-m training_job.upload_data --create-bucket" in out
    assert "--create-bucket" in subprocess.run([sys.executable, "-m", "training_job.upload_data", "--help"],
                                               capture_output=True, text=True, timeout=60, cwd=REPO).stdout
    assert upload_data.main is not None


# ---- make e2e E2E_MODE=serverless ---------------------------------------------------------------

def test_e2e_serverless_installs_knative_deploys_knative_values_and_runs_what_applies(venv):
    deploy = dry_run("deploy", f"VENV={venv}", "E2E_MODE=serverless", "DEPLOY_VALUES=/nonexistent")
    helm = deploy[deploy.index("upgrade --install"):]
    assert helm.index(f"-f '{KIND_VALUES}'") < helm.index("-f 'charts/rakuten-serving/ci/knative-values.yaml'")
    addons = dry_run("cluster-addons", f"VENV={venv}", "E2E_MODE=serverless")
    assert "serving-core.yaml" in addons and "knative-features-patch.yaml" in addons
    assert "serving-core.yaml" not in dry_run("cluster-addons", f"VENV={venv}")
    tests = dry_run("e2e-test", f"VENV={venv}", "E2E_MODE=serverless")
    assert "E2E_MODE='serverless'" in tests and "not node_port" in tests and "not hpa" in tests
    standard = dry_run("e2e-test", f"VENV={venv}")
    assert "E2E_MODE='standard'" in standard and "not node_port" not in standard
    bad = subprocess.run(["make", "-n", "e2e", "E2E_MODE=knative"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "E2E_MODE must be standard or serverless" in bad.stderr


def test_e2e_workflow_runs_both_modes():
    workflow = load_workflow(WORKFLOWS / "e2e-kind.yml")
    job = workflow["jobs"]["e2e"]
    matrix = job["strategy"]["matrix"]["mode"]
    assert "serverless" in matrix and "standard" in matrix and job["strategy"]["fail-fast"] is False
    assert workflow["on"]["workflow_dispatch"]["inputs"]["mode"]["options"] == ["all", "standard", "serverless"]
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "make e2e E2E_MODE=${{ matrix.mode }}" in runs
    upload = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload[0]["with"]["name"].endswith("${{ matrix.mode }}"), "one artifact name per mode"
