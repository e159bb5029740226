"""Data-quality checks of the training job: the measures on a real dataset folder, the real
entrypoint refusing a broken dataset before training (with the reasons, and a FAILED MLflow run),
leaving out a few unreadable rows, and the published bundle carrying its reference profile."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest

from rakuten_common.bundle import PROFILE_FILE
from rakuten_common.data_layout import TRAIN
from rakuten_common.labels import PRDTYPECODES
from rakuten_common.profile import INPUT_FEATURE_NAMES, ReferenceProfile
from tests.support.commands import run_training
from tests.support.s3 import BUCKET
from training_job import sample_data
from training_job.config import QualityConfig
from training_job.data import image_cache
from training_job.data.dataset import load_dataset
from training_job.data.quality import check_dataset


def rewrite_labels(data_dir, changes: dict[int, str]) -> None:
    path = data_dir / TRAIN.labels_csv
    rows = list(csv.reader(path.open(newline="")))
    for row in rows[1:]:
        if int(row[0]) in changes:
            row[1] = changes[int(row[0])]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def truncate_images(data, count: int) -> list[int]:
    """Cut the first ``count`` image files of ``data`` to 300 bytes: a JPEG header without pixels."""
    for path in data.image_paths[:count]:
        path.write_bytes(path.read_bytes()[:300])
    return data.row_ids[:count].tolist()


@pytest.fixture
def small_dataset(tmp_path):
    """~300 generated rows (27 classes, 6+ rows each) with one image left out."""
    return sample_data.generate(tmp_path / "data", rows=300, seed=3, missing_images=1)


def check(folder, config: QualityConfig, data=None):
    """The checks as the training job runs them: on the loaded rows and their image cache."""
    data = data or load_dataset(folder)
    images = image_cache.build(data.image_paths, 32, folder.parent / "cache", workers=2)
    return check_dataset(folder, data, images, config)


def test_the_report_measures_the_dataset(small_dataset):
    data = load_dataset(small_dataset)
    truncate_images(data, 2)
    rewrite_labels(small_dataset, {int(data.row_ids[5]): "999"})
    report = check(small_dataset, QualityConfig())
    s = report.stats
    assert s["rows"] == 320 and s["images_missing"] == 1 and s["images_unreadable"] == 2
    assert s["unknown_codes"] == 1 and report.details["unknown_codes"] == {"999": 1}
    assert report.details["images"]["unreadable_by_reason"] == {"image_corrupt": 2}
    assert s["images_not_500x500"] == 0 and report.details["images"]["formats"] == {"JPEG": 317}
    assert 0.25 < s["description_blank_share"] < 0.45 and s["designation_blank_share"] == 0
    assert s["duplicate_products"] == 0 and s["smallest_class_rows"] >= 5 and s["imbalance_ratio"] > 3
    # within the default limits except the unknown code (0 allowed)
    assert len(report.violations) == 1 and "prdtypecode outside the 27" in report.violations[0]
    assert len(report.excluded) == 3
    relaxed = check(small_dataset, QualityConfig(max_unknown_codes=0.01))
    assert relaxed.violations == []
    data = load_dataset(small_dataset)
    kept = data.row_ids[relaxed.usable_rows(data)]
    assert len(kept) == 316 and not set(kept.tolist()) & relaxed.excluded


def test_every_rule_names_its_limit(small_dataset):
    data = load_dataset(small_dataset)
    strict = QualityConfig(max_missing_images=0.001, min_class_rows=50, max_duplicate_products=0.0,
                           max_imbalance_ratio=2)
    features = small_dataset / TRAIN.features_csv
    rows = list(csv.reader(features.open(newline="")))
    rows[2][3] = rows[1][3]  # a duplicate productid
    with features.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    violations = " | ".join(check(small_dataset, strict, data).violations)
    for flag in ("--max-missing-images", "--min-class-rows", "--max-duplicate-products", "--max-imbalance-ratio"):
        assert flag in violations, violations


@pytest.mark.training
def test_a_broken_dataset_fails_the_job_before_training(small_dataset, tmp_path):
    data = load_dataset(small_dataset)
    truncate_images(data, 30)  # about 9 % of the images
    rewrite_labels(small_dataset, {int(data.row_ids[40]): "31337"})
    store = tmp_path / "store"
    done = run_training(small_dataset, str(store), {}, tmp_path, extra=["--epochs", "1"])
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Data quality rule broken: unreadable images {'image_corrupt': 30}: 30 of 319 rows" in done.stderr
    assert "more than the 5.0% allowed (--max-unreadable-images)" in done.stderr
    assert "prdtypecode outside the 27 known ones {'31337': 1}" in done.stderr
    assert "nothing trained" in done.stderr and "Epoch" not in done.stdout
    assert not store.exists() or not any(store.iterdir()), "nothing may be published"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("rakuten-classifier").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["failure"] == "data_quality"
    assert run.data.metrics["dq_images_unreadable"] == 30 and run.data.metrics["dq_unknown_codes"] == 1
    report = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="data_quality.json",
                                                 dst_path=str(tmp_path), tracking_uri=client.tracking_uri)
    assert len(json.loads(Path(report).read_text())["violations"]) == 2


@pytest.mark.training
def test_a_few_unreadable_images_are_left_out_and_training_goes_on(small_dataset, tmp_path):
    left_out = truncate_images(load_dataset(small_dataset), 2)
    store = tmp_path / "store"
    done = run_training(small_dataset, str(store), {}, tmp_path, extra=["--epochs", "1", "--image-size", "32"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"2 rows left out (unreadable image or unknown prdtypecode), e.g. row ids {sorted(left_out)}" in done.stderr
    (version,) = list(store.iterdir())
    assert (version / PROFILE_FILE).is_file()


def test_the_published_bundle_holds_its_profile_and_mlflow_the_report(published, s3_client):
    prefix = published.uri.removeprefix(f"s3://{BUCKET}/")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    (manifest_key,) = [k for k in keys if k.endswith("/manifest.json")]
    manifest = json.loads(s3_client.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    assert PROFILE_FILE in manifest["files"]  # checksummed like every file of the bundle
    text = s3_client.get_object(Bucket=BUCKET, Key=manifest_key.replace("manifest.json", PROFILE_FILE))["Body"].read()
    profile = ReferenceProfile.from_json(text.decode())
    assert profile.prdtypecodes == PRDTYPECODES and 100 < profile.rows < 200  # the validation split (10 %)
    assert set(profile.features) == {*INPUT_FEATURE_NAMES, "top1_confidence"}
    assert profile.features["image_width"].mean == 500 and 0.2 < profile.features["description_empty"].mean < 0.5
    assert profile.features["top1_confidence"].mean > 0.5 and 0 < profile.features["text_oov_share"].mean < 0.5
    assert "Data quality of 1600 rows" in published.stdout
    client = mlflow.MlflowClient(tracking_uri=published.tracking_uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("rakuten-classifier").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags]
    assert run.data.metrics["dq_images_missing"] == 2 and run.data.metrics["dq_unknown_codes"] == 0
    assert "data_quality.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
