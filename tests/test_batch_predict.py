"""Batch predictions end to end: the published model classifies the sample's test split (in S3)
into a CSV written to S3, one row per product with an image, codes among the 27."""
from __future__ import annotations

import csv
import io

import pytest

from rakuten_common.data_layout import TEST
from rakuten_common.labels import PRDTYPECODES
from tests.support.commands import run_module
from tests.support.s3 import BUCKET

pytestmark = pytest.mark.e2e


def test_batch_predictions_of_the_test_split(published, s3, s3_client, tmp_path):
    output = f"s3://{BUCKET}/predictions/{tmp_path.name}.csv"
    done = run_module("training_job.batch_predict",
                      "--model-uri", published.uri, "--data-dir", published.data_uri, "--output", output,
                      "--top-k", "3", "--cache-dir", str(tmp_path / "cache"), env=s3.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "products/s" in done.stdout
    body = s3_client.get_object(
        Bucket=BUCKET, Key=f"predictions/{tmp_path.name}.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    with open(published.data_dir / TEST.features_csv, encoding="utf-8") as f:
        expected = [int(r["productid"]) for r in csv.DictReader(f)]
    assert [int(r["productid"]) for r in rows] == expected
    assert list(rows[0]) == ["productid", "prdtypecode", "probability", "prdtypecode_2", "probability_2",
                             "prdtypecode_3", "probability_3"]
    for row in rows:
        ranked = [float(row[k]) for k in ("probability", "probability_2", "probability_3")]
        assert {int(row[k]) for k in ("prdtypecode", "prdtypecode_2", "prdtypecode_3")} <= set(PRDTYPECODES)
        assert ranked == sorted(ranked, reverse=True) and 0 <= ranked[-1] <= ranked[0] <= 1


def test_products_without_a_usable_image_are_reported_and_left_out(published, s3, tmp_path):
    data = tmp_path / "data"
    rows = (published.data_dir / TEST.features_csv).read_text(encoding="utf-8").splitlines()
    data.mkdir()
    (data / TEST.features_csv).write_text("\n".join(rows[:6]) + "\n", encoding="utf-8")
    (data / TEST.image_dir).mkdir(parents=True)
    listed = list(csv.DictReader(io.StringIO("\n".join(rows[:6]))))
    for i, row in enumerate(listed):
        name = TEST.image_name(row["imageid"], row["productid"])
        if i == 0:
            continue  # no image file
        content = b"not a picture" if i == 1 else (published.data_dir / TEST.image_dir / name).read_bytes()
        (data / TEST.image_dir / name).write_bytes(content)
    out = tmp_path / "preds.csv"
    done = run_module("training_job.batch_predict", "--model-uri", published.uri, "--data-dir", str(data),
                      "--output", str(out), "--cache-dir", str(tmp_path / "c"), env=s3.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"1 products have no image file and are left out (productids {listed[0]['productid']})" in done.stderr
    assert f"1 products have an unreadable image and are left out (first: productid {listed[1]['productid']}" \
        in done.stderr
    written = list(csv.DictReader(out.open()))
    assert [r["productid"] for r in written] == [r["productid"] for r in listed[2:]]
