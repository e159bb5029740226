"""Datasets in object storage: the upload command, the training job's copy of an s3:// dataset,
both resumable, and clear one-line errors. Against the real S3 API server (moto_server)."""
from __future__ import annotations

import pytest

from rakuten_common.data_layout import TRAIN
from rakuten_common.storage import StorageError
from tests.support.commands import run_module, run_training
from tests.support.s3 import DATASETS_BUCKET
from training_job import sample_data
from training_job.data.dataset import DatasetError, load_dataset
from training_job.data.source import local_dataset
from training_job.upload_data import upload_dataset

pytestmark = pytest.mark.e2e


def objects(client, prefix: str) -> dict[str, int]:
    listing = client.list_objects_v2(Bucket=DATASETS_BUCKET, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1:]: o["Size"] for o in listing.get("Contents", [])}


@pytest.fixture
def small_dataset(tmp_path):
    return sample_data.generate(tmp_path / "small", rows=60, test_rows=5, seed=1, image_size=80)


def test_upload_copies_the_raw_layout_then_resumes(small_dataset, s3_env, s3_client, tmp_path):
    prefix = f"up-{tmp_path.name}"
    uri = f"s3://{DATASETS_BUCKET}/{prefix}"
    upload_dataset(small_dataset, uri, workers=4)
    stored = objects(s3_client, prefix)
    local = {p.relative_to(small_dataset).as_posix(): p.stat().st_size for p in small_dataset.rglob("*") if p.is_file()}
    assert stored == local  # CSVs, image_train and image_test, same names and sizes
    # an interrupted upload: one image and one CSV never made it
    client = s3_client
    lost = sorted(k for k in stored if k.startswith(TRAIN.image_dir))[3]
    for key in (lost, TRAIN.labels_csv):
        client.delete_object(Bucket=DATASETS_BUCKET, Key=f"{prefix}/{key}")
    done = run_module("training_job.upload_data", str(small_dataset), uri, env=s3_env.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "images: 1 files" in done.stdout and "CSV files: 1 files" in done.stdout, done.stdout
    assert objects(s3_client, prefix) == local


def test_training_copy_of_an_s3_dataset_is_resumable(small_dataset, s3_env, tmp_path):
    prefix = f"dl-{tmp_path.name}"
    upload_dataset(small_dataset, f"s3://{DATASETS_BUCKET}/{prefix}", workers=4)
    root = local_dataset(f"s3://{DATASETS_BUCKET}/{prefix}", tmp_path / "cache", TRAIN, workers=4)
    assert load_dataset(root).fingerprint == load_dataset(small_dataset).fingerprint
    # interrupted: one image half-written (.partial left behind), another never fetched
    images = sorted((root / TRAIN.image_dir).iterdir())
    images[0].rename(images[0].with_name(images[0].name + ".partial"))
    images[1].write_bytes(b"truncated")
    root_again = local_dataset(f"s3://{DATASETS_BUCKET}/{prefix}", tmp_path / "cache", TRAIN, workers=4)
    assert root_again == root
    assert load_dataset(root).fingerprint == load_dataset(small_dataset).fingerprint


def test_missing_dataset_and_bucket_are_one_line_errors(s3_env, tmp_path):
    with pytest.raises(DatasetError, match=r"s3://rakuten-datasets/nothing-here has no X_train_update\.csv"):
        local_dataset(f"s3://{DATASETS_BUCKET}/nothing-here", tmp_path, TRAIN)
    with pytest.raises(DatasetError, match="no-such-bucket.*cannot be read"):
        local_dataset("s3://no-such-bucket/data", tmp_path, TRAIN)
    dataset = sample_data.generate(tmp_path / "d", rows=30, test_rows=0, image_size=40)
    with pytest.raises(StorageError, match="bucket no-such-bucket cannot be used"):
        upload_dataset(dataset, "s3://no-such-bucket/x")


def test_training_job_refuses_a_dataset_uri_that_does_not_exist(published, s3, tmp_path):
    done = run_training(f"s3://{DATASETS_BUCKET}/does-not-exist", published.uri, s3.env, tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(lines) == 1 and "s3://rakuten-datasets/does-not-exist has no X_train_update.csv" in lines[0]
    assert "Traceback" not in done.stderr and "Epoch" not in done.stdout


def test_bad_csvs_and_unknown_codes_fail_before_training(published, s3, tmp_path):
    broken = sample_data.generate(tmp_path / "broken", rows=60, test_rows=0, image_size=40)
    labels = (broken / TRAIN.labels_csv).read_text().splitlines()
    labels[1] = labels[1].split(",")[0] + ",9999"
    (broken / TRAIN.labels_csv).write_text("\n".join(labels) + "\n")
    done = run_training(broken, published.uri, s3.env, tmp_path)
    assert done.returncode == 1 and "prdtypecode outside the 27 known ones {'9999': 1}" in done.stderr
    (broken / TRAIN.features_csv).write_text(",title,productid\n0,a,1\n")
    done = run_training(broken, published.uri, s3.env, tmp_path)
    assert done.returncode == 1 and "X_train_update.csv columns are" in done.stderr
    assert "Publishing" not in done.stdout
