"""The sample generator writes the exact Rakuten layout, and the loader reads it unchanged."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from rakuten_common.labels import PRDTYPECODES, TRAIN_COUNTS
from rakuten_common.preprocessing import clean_text
from training_job import sample_data
from training_job.data.dataset import DatasetError, load_dataset
from training_job.training.splits import stratified_split


def test_layout_is_the_real_one(sample_dir):
    with open(sample_dir / "X_train_update.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", "designation", "description", "productid", "imageid"]
    with open(sample_dir / "Y_train_CVw08PX.csv", encoding="utf-8") as f:
        labels = list(csv.reader(f))
    assert labels[0] == ["", "prdtypecode"]
    assert [r[0] for r in rows[1:]] == [r[0] for r in labels[1:]] == [str(i) for i in range(len(rows) - 1)]
    assert {int(r[1]) for r in labels[1:]} == set(PRDTYPECODES)
    with open(sample_dir / "X_test_update.csv", encoding="utf-8") as f:
        test_rows = list(csv.reader(f))
    assert int(test_rows[1][0]) == len(rows) - 1  # the test index continues after train
    names = {p.name for p in (sample_dir / "images" / "image_train").iterdir()}
    assert all(re.fullmatch(r"image_\d+_product_\d+\.jpg", n) for n in names)
    with_image = sum(f"image_{r[4]}_product_{r[3]}.jpg" in names for r in rows[1:])
    assert with_image == len(rows) - 1 - 2  # the fixture leaves two images out


def test_text_looks_like_rakuten(sample_dir):
    with open(sample_dir / "X_train_update.csv", encoding="utf-8") as f:
        descriptions = [r["description"] for r in csv.DictReader(f)]
    empty = sum(not d for d in descriptions) / len(descriptions)
    assert 0.25 < empty < 0.45
    assert any("&eacute;" in d for d in descriptions) and any("<br />" in d or "<p>" in d for d in descriptions)


def test_class_imbalance_follows_the_real_counts():
    counts = sample_data.class_counts(2700)
    assert counts[2583] == max(counts.values()) and counts[1180] == min(counts.values())
    assert counts[2583] / counts[1180] > 5 and TRAIN_COUNTS[2583] / TRAIN_COUNTS[1180] > 10


def test_generator_is_deterministic(tmp_path):
    a = sample_data.generate(tmp_path / "a", rows=60, test_rows=0, seed=3, image_size=64)
    b = sample_data.generate(tmp_path / "b", rows=60, test_rows=0, seed=3, image_size=64)
    for name in ("X_train_update.csv", "Y_train_CVw08PX.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    first = sorted((a / "images" / "image_train").iterdir())[0]
    assert first.read_bytes() == (b / "images" / "image_train" / first.name).read_bytes()


def test_loader_reports_rows_without_image_and_keeps_each_rows_own_text(sample_dir):
    data = load_dataset(sample_dir)
    assert len(data.missing_images) == 2
    assert len(data) + 2 == len((sample_dir / "Y_train_CVw08PX.csv").read_text().splitlines()) - 1
    with open(sample_dir / "X_train_update.csv", encoding="utf-8") as f:
        raw = {int(r[""]): r for r in csv.DictReader(f)}
    for i in (0, 1, len(data) - 1):  # each row keeps its own designation (no row's text glued to others)
        row = raw[int(data.row_ids[i])]
        assert data.texts[i].startswith(clean_text(row["designation"]))
        assert data.image_paths[i].name == f"image_{row['imageid']}_product_{row['productid']}.jpg"


def test_loader_refuses_a_folder_that_is_not_the_rakuten_layout(tmp_path):
    with pytest.raises(DatasetError, match="X_train_update.csv"):
        load_dataset(tmp_path)
    (tmp_path / "X_train_update.csv").write_text(",title,productid\n0,a,1\n")
    (tmp_path / "Y_train_CVw08PX.csv").write_text(",prdtypecode\n0,10\n")
    with pytest.raises(DatasetError, match="columns"):
        load_dataset(tmp_path)


def test_stratified_split_keeps_every_class_in_validation():
    codes = np.array([c for c, n in sample_data.class_counts(1000).items() for _ in range(n)])
    train, val = stratified_split(codes, 0.2, seed=0)
    assert set(codes[val]) == set(codes) and not set(train) & set(val)
    assert len(train) + len(val) == len(codes)
