"""Training and serving pre-process a product identically and the model answers identically:
the training loader's arrays vs the server's codec + prepare() on the same rows sent as V2."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceRequest

from model_server.codec import decode_request
from model_server.model import prepare
from model_server.settings import Settings
from rakuten_common.artifacts import fetch
from rakuten_common.bundle import load_bundle
from rakuten_common.runner import ModelRunner
from rakuten_common.v2_client import Product, infer_request
from training_job.data import image_cache
from training_job.data.dataset import load_dataset
from training_job.training.inputs import batches


@pytest.fixture(scope="module")
def rows(sample_dir):
    """Twelve raw CSV rows (with their image files), as a client would send them."""
    data = load_dataset(sample_dir)
    with open(sample_dir / "X_train_update.csv", encoding="utf-8") as f:
        raw = {int(r[""]): r for r in csv.DictReader(f)}
    positions = np.arange(12)
    products = [Product(raw[int(data.row_ids[i])]["designation"], raw[int(data.row_ids[i])]["description"],
                        data.image_paths[i].read_bytes()) for i in positions]
    return data.subset(positions), products


def served_inputs(products, image_size):
    body = InferenceRequest.model_validate(infer_request(products))
    request = InferRequest.from_inference_request(body, "rakuten-classifier")
    limits = Settings().limits
    return prepare(decode_request(request, limits, 27), image_size, limits.image)


def training_images(subset, size, tmp_path):
    """The pixels as training streams them: decoded once into the on-disk cache, read back by row."""
    cache = image_cache.build(subset.image_paths, size, tmp_path / "cache", workers=2)
    return cache, cache.read(np.arange(len(subset)))


def test_text_and_image_arrays_are_identical(rows, tmp_path):
    subset, products = rows
    served = served_inputs(products, 64)
    assert list(served["text"]) == list(subset.texts)
    np.testing.assert_array_equal(served["image"], training_images(subset, 64, tmp_path)[1])


def test_model_outputs_are_identical(rows, published, s3, tmp_path, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    bundle, _ = fetch(published.uri, tmp_path, progress=lambda _: None)
    model, _, spec = load_bundle(bundle)
    subset, products = rows
    cache, _ = training_images(subset, spec.image_size, tmp_path)
    training_view = model.predict(batches(subset.texts, cache, np.arange(len(subset)), None, 8, spec.inputs),
                                  verbose=0)
    serving_view = ModelRunner(model, spec)(served_inputs(products, spec.image_size))
    np.testing.assert_allclose(serving_view, training_view, atol=1e-5)
    assert serving_view.shape == (12, 27)
