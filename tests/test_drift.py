"""The drift building blocks in process: profile features, PSI and Jensen-Shannon, the reference
profile file, the rolling window and the predictor's gauges (``model_server.drift``) read from a
real prometheus_client registry. The end-to-end run (server, Locust, Prometheus, alerts) is in
tests/test_drift_monitoring.py."""
from __future__ import annotations

import io
import json
import logging
import math
import time

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from scipy.spatial.distance import jensenshannon

from model_server.drift import DriftMonitor, RollingWindow
from model_server.settings import DriftSettings
from rakuten_common.bundle import (
    LABELS_FILE,
    PROFILE_FILE,
    VOCABULARY_FILE,
    load_profile,
)
from rakuten_common.labels import PRDTYPECODES
from rakuten_common.preprocessing import ImageInfo, decode_image, product_text
from rakuten_common.profile import (
    INPUT_FEATURE_NAMES,
    MAX_PROFILE_BYTES,
    ProfileError,
    ReferenceProfile,
    build_profile,
    image_features,
    is_blank,
    js_distance,
    product_features,
    psi,
    text_features,
)
from rakuten_common.synthetic import make_image, make_text

VOCABULARY = frozenset(["coussin", "lin", "chaise", "table", "bois"])


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_psi_and_jensen_shannon_distance():
    p, q = np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.1, 0.1, 0.4, 0.4])
    assert psi(p, p) == 0.0
    # by hand, the empty bin counted as 1e-4
    e, a = np.array([0.5, 0.3, 0.2, 1e-4]), q
    assert psi(p, q) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert psi(p, q) > 1.0 > psi(p, np.array([0.45, 0.33, 0.22, 0.0]))
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.dirichlet(np.ones(27)), rng.dirichlet(np.ones(27))
        assert js_distance(x, y) == pytest.approx(jensenshannon(x, y, base=2))
    assert js_distance(np.array([3, 0]), np.array([0, 5])) == pytest.approx(1.0)  # counts are normalised
    assert js_distance(p, p) == 0.0


def test_text_features_count_tokens_and_unknown_words_of_what_the_model_reads():
    texts = [product_text("Coussin de chaise", "<p>en lin</p>"), "", "table " * 99 + "inconnu"]
    values = text_features(texts, [False, True, False], VOCABULARY, sequence_length=4)
    assert values[0].tolist() == [5, 0, 0.5]      # coussin de chaise en | lin: "de", "en" unknown
    assert values[1].tolist() == [0, 1, 0.0]      # no text, blank description
    assert values[2].tolist() == [100, 0, 0.0]    # only the first 4 tokens are the model's


def test_image_features_from_the_header_and_the_decoded_array():
    info = ImageInfo()
    colour = decode_image(encode(Image.new("RGB", (640, 320), (255, 0, 0)), "PNG"), 64, info=info)
    assert (info.format, info.width, info.height) == ("PNG", 640, 320)
    grey_info = ImageInfo()
    grey = decode_image(encode(Image.new("L", (48, 48), 255)), 64, info=grey_info)
    values = image_features([info, grey_info], np.stack([colour, grey]))
    assert values[0, :4].tolist() == [640, 320, 2.0, 1]      # width, height, aspect, PNG
    assert values[1, :4].tolist() == [48, 48, 1.0, 0]        # JPEG
    assert values[0, 4] == pytest.approx(1 / 3, abs=0.01) and values[0, 5] == pytest.approx(1.0, abs=0.01)
    assert values[1, 4] == pytest.approx(1.0, abs=0.01) and values[1, 5] == 0.0  # white, grayscale


def products(count: int, seed: int, size: int = 500, grey: bool = False, english: bool = False):
    """(texts, descriptions, infos, images) of generated products, as serving prepares them."""
    rng = np.random.default_rng(seed)
    texts, descriptions, infos, images = [], [], [], []
    for code in rng.choice(PRDTYPECODES, size=count):
        designation, description = make_text(rng, int(code))
        if english:
            designation, description = "Brand new garden chair with cushion", "Fast shipping"
        image = make_image(rng, int(code), size)
        info = ImageInfo()
        images.append(decode_image(encode(image.convert("L") if grey else image), 32, info=info))
        texts.append(product_text(designation, description))
        descriptions.append(description)
        infos.append(info)
    return texts, descriptions, infos, np.stack(images)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle folder as far as drift monitoring reads it: labels, vocabulary and profile."""
    folder = tmp_path_factory.mktemp("bundle")
    vocabulary = sorted({token for text in products(400, seed=0)[0] for token in text.split()})  # "training"
    texts, descriptions, infos, images = products(400, seed=1)  # "validation"
    features = product_features(texts, [is_blank(d) for d in descriptions], infos, images, frozenset(vocabulary), 64)
    probabilities = np.random.default_rng(2).dirichlet(np.full(27, 0.05), size=len(texts))
    profile = build_profile(features, probabilities, np.random.default_rng(3).choice(PRDTYPECODES, 900),
                            PRDTYPECODES)
    (folder / PROFILE_FILE).write_text(profile.to_json())
    (folder / LABELS_FILE).write_text(json.dumps({"prdtypecodes": list(PRDTYPECODES)}))
    (folder / VOCABULARY_FILE).write_text("\n".join(["", "[UNK]", *vocabulary]) + "\n")
    return folder


def test_profile_file_round_trip_and_validation(bundle, tmp_path):
    profile = load_profile(bundle)
    assert profile.rows == 400 and set(profile.features) == {*INPUT_FEATURE_NAMES, "top1_confidence"}
    assert ReferenceProfile.from_json(profile.to_json()) == profile
    assert 0 <= profile.low_confidence_share(0.5) <= 1 and profile.low_confidence_share(1.01) == 1.0
    good = json.loads(profile.to_json())

    def broken(change) -> str:
        data = json.loads(json.dumps(good))
        change(data)
        with pytest.raises(ProfileError) as caught:
            ReferenceProfile.from_json(json.dumps(data))
        return str(caught.value)

    assert "format" in broken(lambda d: d.update(format="other/9"))
    assert "not increasing" in broken(lambda d: d["features"]["text_tokens"]["edges"].reverse())
    assert "summing to 1" in broken(lambda d: d["features"]["image_width"]["probabilities"].__setitem__(0, 5))
    assert "finite" in broken(lambda d: d["features"]["image_width"].update(mean=float("nan")))
    assert "prior" in broken(lambda d: d["classes"]["prior"].pop())
    assert "quantiles" in broken(lambda d: d["top1_confidence_quantiles"].reverse())
    newer = json.loads(json.dumps(good))
    newer["features"]["a_future_feature"] = {"edges": "anything"}
    assert set(ReferenceProfile.from_json(json.dumps(newer)).features) == set(profile.features)
    big = tmp_path / PROFILE_FILE
    big.write_text(" " * (MAX_PROFILE_BYTES + 1))
    with pytest.raises(ProfileError, match="more than"):
        ReferenceProfile.load(big)
    (tmp_path / LABELS_FILE).write_text(json.dumps({"prdtypecodes": list(reversed(PRDTYPECODES))}))
    (tmp_path / PROFILE_FILE).write_text(profile.to_json())
    with pytest.raises(ProfileError, match="classes"):
        load_profile(tmp_path)


def test_rolling_window_counts_follow_entries_and_exits():
    window = RollingWindow(capacity=5, total_bins=4, bin_columns=1, n_values=1, n_classes=3)
    rows = np.arange(12)
    for start in range(0, 12, 3):  # 4 additions of 3 rows: the window keeps the newest 5
        chunk = rows[start:start + 3]
        window.add(chunk.astype(float), (chunk % 4).reshape(-1, 1), chunk.reshape(-1, 1).astype(float),
                   chunk % 3, chunk / 12, chunk < 2)
    kept = rows[-5:]
    assert window.size == 5
    assert window.bin_counts.tolist() == np.bincount(kept % 4, minlength=4).tolist()
    assert window.class_counts.tolist() == np.bincount(kept % 3, minlength=3).tolist()
    assert window.value_sums[0] == kept.sum() and window.confidence_sum == pytest.approx(kept.sum() / 12)
    window.expire(oldest=10)  # rows 7, 8, 9 are older
    assert window.size == 2 and window.value_sums[0] == 21 and window.bin_counts.sum() == 2
    window.add(np.arange(20, 28, dtype=float), np.zeros((8, 1), int), np.ones((8, 1)), np.zeros(8, int),
               np.ones(8), np.zeros(8, bool))  # more rows than the capacity at once
    assert window.size == 5 and window.bin_counts.tolist() == [5, 0, 0, 0] and window.value_sums[0] == 5
    window.expire(oldest=100)
    assert window.size == 0 and window.value_sums[0] == 0 and window.bin_counts.sum() == 0


def gauges(registry: CollectorRegistry) -> dict[tuple, float]:
    return {(s.name, *sorted((k, v) for k, v in s.labels.items() if k != "model_name")): s.value
            for family in registry.collect() for s in family.samples}


def feed(monitor: DriftMonitor, batch, classes: np.ndarray, confidence: np.ndarray, per_request: int = 4) -> None:
    texts, descriptions, infos, images = batch
    for i in range(0, len(texts), per_request):
        rows = slice(i, i + per_request)
        observation = monitor.features(texts[rows], descriptions[rows], infos[rows], images[rows])
        monitor.observe(observation, classes[rows], confidence[rows])


def test_monitor_gauges_separate_normal_from_shifted_traffic_and_restart_with_a_version(bundle):
    registry = CollectorRegistry()
    monitor = DriftMonitor("rakuten-classifier", DriftSettings(300, 3600, 150, 0.5), registry=registry)
    assert monitor.features(["x"], [""], [ImageInfo()], np.zeros((1, 32, 32, 3), np.uint8)) is None
    assert gauges(registry) == {}  # nothing before a version is loaded
    monitor.start(bundle, "v1", sequence_length=64)
    profile = load_profile(bundle)
    rng = np.random.default_rng(5)
    prior = np.asarray(profile.class_prior)

    feed(monitor, products(100, seed=9), rng.choice(27, 100, p=prior), np.full(100, 0.9))
    values = gauges(registry)
    assert values[("rakuten_drift_window_products", ("model_version", "v1"))] == 100
    assert math.isnan(values[("rakuten_drift_psi", ("feature", "text_tokens"), ("model_version", "v1"))])

    feed(monitor, products(300, seed=10), rng.choice(27, 300, p=prior), np.full(300, 0.9))
    normal = gauges(registry)
    psis = {k[1][1]: v for k, v in normal.items() if k[0] == "rakuten_drift_psi"}
    print("normal:", {k: round(v, 3) for k, v in psis.items()})
    assert normal[("rakuten_drift_window_products", ("model_version", "v1"))] == 300
    assert max(v for k, v in psis.items() if k != "top1_confidence") < 0.25
    assert normal[("rakuten_drift_prediction_js_distance", ("model_version", "v1"), ("reference", "class_prior"))] < 0.3
    assert normal[("rakuten_drift_top1_confidence_mean", ("model_version", "v1"), ("source", "window"))] == pytest.approx(0.9)

    feed(monitor, products(300, seed=11, size=40, grey=True, english=True), np.full(300, 3), np.full(300, 0.2))
    shifted = gauges(registry)
    psis = {k[1][1]: v for k, v in shifted.items() if k[0] == "rakuten_drift_psi"}
    print("shifted:", {k: round(v, 3) for k, v in psis.items()})
    assert min(psis[f] for f in ("image_width", "image_height", "image_saturation", "text_oov_share",
                                 "top1_confidence")) > 1
    assert shifted[("rakuten_drift_prediction_js_distance", ("model_version", "v1"), ("reference", "class_prior"))] > 0.5
    assert shifted[("rakuten_drift_low_confidence_share", ("model_version", "v1"), ("source", "window"))] == 1.0
    assert shifted[("rakuten_data_feature_mean", ("feature", "image_width"), ("model_version", "v1"),
                    ("source", "window"))] == 40
    assert shifted[("rakuten_data_feature_mean", ("feature", "image_width"), ("model_version", "v1"),
                    ("source", "reference"))] == 500

    stale = monitor.features(*products(1, seed=12))
    monitor.start(bundle, "v2", sequence_length=64)  # a new version: a new, empty window
    monitor.observe(stale, np.zeros(1, int), np.ones(1))  # features of the old version are dropped
    fresh = gauges(registry)
    assert {k for k in fresh if ("model_version", "v1") in k} == set()
    assert fresh[("rakuten_drift_window_products", ("model_version", "v2"))] == 0


def test_window_forgets_products_older_than_its_time_bound(bundle):
    registry = CollectorRegistry()
    monitor = DriftMonitor("rakuten-classifier", DriftSettings(1000, 0.5, 1, 0.5), registry=registry)
    monitor.start(bundle, "v1", sequence_length=64)
    feed(monitor, products(8, seed=13), np.zeros(8, int), np.ones(8))
    assert gauges(registry)[("rakuten_drift_window_products", ("model_version", "v1"))] == 8
    time.sleep(0.6)
    assert gauges(registry)[("rakuten_drift_window_products", ("model_version", "v1"))] == 0


def test_monitoring_is_off_without_a_profile_or_with_a_zero_window(bundle, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rakuten.model_server.drift")
    (tmp_path / LABELS_FILE).write_text((bundle / LABELS_FILE).read_text())
    (tmp_path / VOCABULARY_FILE).write_text("")
    for folder, settings, message in ((tmp_path, DriftSettings(100, 60, 10, 0.5), "has no profile.json"),
                                      (bundle, DriftSettings(0, 60, 10, 0.5), "off (drift window of 0")):
        registry = CollectorRegistry()
        monitor = DriftMonitor("rakuten-classifier", settings, registry=registry)
        monitor.start(folder, "v1", sequence_length=64)
        assert not monitor.active and gauges(registry) == {}
        assert message in caplog.text
    (tmp_path / PROFILE_FILE).write_text("{not json")
    monitor = DriftMonitor("rakuten-classifier", DriftSettings(100, 60, 10, 0.5), registry=None)
    monitor.start(tmp_path, "v1", sequence_length=64)
    assert not monitor.active and "profile.json unusable" in caplog.text
