"""The training job as the container runs it: data -> fused model -> MLflow run -> S3 version."""
from __future__ import annotations

import json
import re

import mlflow
import pytest

from rakuten_common.labels import PRDTYPECODES
from tests.support.commands import run_training
from tests.support.s3 import BUCKET


@pytest.fixture(scope="module")
def run(published):
    client = mlflow.MlflowClient(tracking_uri=published.tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "rakuten-classifier"]
    runs = client.search_runs([experiment.experiment_id])
    (found,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, found


@pytest.fixture(scope="module")
def manifest(published, s3_client):
    prefix = published.uri.removeprefix(f"s3://{BUCKET}/")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    (manifest_key,) = [k for k in keys if k.endswith("/manifest.json")]
    return json.loads(s3_client.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read()), keys


def test_progress_and_missing_images_are_reported(published):
    out = published.stdout
    assert re.search(r"^\S+ WARNING rakuten\.training: 2 rows have no image file and are left out",
                     published.stderr, re.MULTILINE), "warnings go to stderr, in the project's log format"
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (INFO|WARNING) [\w.]+: ", line)
               for line in out.splitlines()), "every stdout line is a log record in the one format"
    assert re.search(r"Epoch 1/10 \(\d+ s\): accuracy", out) and "decoded" in out
    assert re.search(r"Copying dataset s3://rakuten-datasets/sample", out), "trained from the dataset in S3"
    assert re.search(r"uploaded model\.keras .*100%|uploaded .*100% of", out)
    assert "is complete" in out


def test_fused_model_beats_each_branch_alone(run):
    client, found = run
    children = client.search_runs([found.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{found.info.run_id}'")
    assert sorted(r.info.run_name.rsplit("-", 2)[-2] for r in children) == ["image", "text"]
    assert all("val_weighted_f1" in r.data.metrics and "loss" in r.data.metrics for r in children)
    metrics = found.data.metrics
    fused, text, image = (metrics[f"val_{k}weighted_f1"] for k in ("", "text_only_", "image_only_"))
    print(f"weighted F1 fused {fused:.3f}, text only {text:.3f}, image only {image:.3f}")
    assert fused > text + 0.1 and fused > image + 0.1


def test_mlflow_run_holds_params_metrics_figure_model_and_lineage(run, manifest):
    client, found = run
    data = found.data
    assert data.params["model.image_size"] == "64" and data.params["epochs"] == "10"
    for code in PRDTYPECODES:
        assert {f"val_precision_{code}", f"val_recall_{code}", f"val_f1_{code}"} <= set(data.metrics)
    assert data.tags["mlflow.source.git.commit"] and len(data.tags["dataset_fingerprint"]) == 64
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"confusion_matrix.png", "per_class_f1.png", "model"} <= artifacts
    model_files = {a.path for a in client.list_artifacts(found.info.run_id, "model")}
    assert "model/model.keras" in model_files and "model/labels.json" in model_files
    body, _ = manifest
    assert body["mlflow_run_id"] == found.info.run_id
    assert body["dataset_fingerprint"] == data.tags["dataset_fingerprint"]
    assert 1 <= data.metrics["val_best_epoch"] <= 10 and data.metrics["val_best_epoch"] == body["metrics"]["best_epoch"]
    assert 0 < body["metrics"]["eval_weighted_f1"] <= 1, "scored on the fixed evaluation split"
    assert int(data.params["eval_rows"]) > 0


def test_published_version_layout(manifest):
    body, keys = manifest
    version = body["version"]
    names = {k.split(f"/{version}/", 1)[1] for k in keys}
    assert names == {"model.keras", "labels.json", "preprocessing.json", "vocabulary.txt", "profile.json",
                     "manifest.json"}
    assert set(body["files"]) == names - {"manifest.json"}
    assert 0 < body["metrics"]["weighted_f1"] <= 1 and body["created_at"].endswith("Z")


def test_an_existing_version_is_refused_before_training(published, manifest, s3, tmp_path):
    body, _ = manifest
    done = run_training(published.data_dir, published.uri, s3.env, tmp_path, extra=["--version", body["version"]])
    assert done.returncode == 1
    assert f"version {body['version']} already exists" in done.stderr
    assert "Epoch" not in done.stdout


def test_early_stopping_keeps_the_best_epoch(sample_dir, s3, tmp_path):
    """Labels shuffled: nothing to learn, so validation F1 stops improving and the job stops early."""
    import shutil

    from rakuten_common.data_layout import TRAIN

    data = tmp_path / "noise"
    shutil.copytree(sample_dir, data)
    lines = (data / TRAIN.labels_csv).read_text().splitlines()
    codes = [line.split(",")[1] for line in lines[1:]]
    shuffled = codes[7:] + codes[:7]
    (data / TRAIN.labels_csv).write_text("\n".join([lines[0], *(f"{i},{c}" for i, c in enumerate(shuffled))]) + "\n")
    done = run_training(data, f"s3://{BUCKET}/early-{tmp_path.name}", s3.env, tmp_path,
                        extra=["--epochs", "30", "--patience", "2", "--max-rows", "400"])
    assert done.returncode == 0, done.stderr[-2000:]
    stop = re.search(r"Early stop after epoch (\d+): best validation weighted F1 [\d.]+ at epoch (\d+)", done.stdout)
    assert stop, done.stdout[-2000:]
    stopped, best = int(stop.group(1)), int(stop.group(2))
    assert stopped < 30 and stopped == best + 2
