"""Wide & deep text: the wide part's solver weights and the fusion live inside the saved model,
the in-graph TF-IDF is what the solver saw, and the fused-vs-wide check warns."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from rakuten_common.bundle import PreprocessingSpec, save_bundle
from rakuten_common.labels import LabelMap
from rakuten_common.preprocessing import product_text
from rakuten_common.synthetic import make_text
from tests.support.tiers import starts
from training_job.config import ModelConfig
from training_job.training import wide
from training_job.training.model import WIDE_LAYER, build_model, vocabulary

# Tiny text-only model: the image branch has nothing to do with the wide part.
CONFIG = ModelConfig(branches=("text",), max_tokens=2000, text_units=16, fusion_units=16)


def text_input(texts) -> dict:
    import tensorflow as tf

    return {"text": tf.constant(np.asarray(texts, dtype=str).reshape(-1, 1))}


@pytest.fixture(scope="module")
@starts("training")
def trained(tmp_path_factory):
    """A text-only wide & deep model on generated texts: wide part solved, deep part trained
    briefly, fusion fitted on validation rows; saved as a bundle."""
    import keras

    labels = LabelMap()
    rng = np.random.default_rng(3)
    codes = np.repeat(labels.codes, 16)
    texts = np.array([product_text(*make_text(rng, int(code))) for code in codes])
    targets = np.array([labels.to_index(c) for c in codes])
    order = rng.permutation(len(codes))
    train, val = np.sort(order[:-108]), np.sort(order[-108:])
    keras.utils.set_random_seed(0)
    model = build_model(CONFIG, texts[train])
    fitted = wide.fit_wide(model, CONFIG, texts, targets, train, val)
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy")
    model.fit(text_input(texts[train]), targets[train], epochs=2, batch_size=64, verbose=0)
    fusion = wide.fit_fusion(model, text_input(texts[val]), targets[val])
    bundle = save_bundle(model, labels, PreprocessingSpec(32, 64, ("text",)), vocabulary(model),
                         tmp_path_factory.mktemp("bundle") / "v1")
    return model, texts, targets, train, val, fitted, fusion, bundle


def test_the_wide_layer_is_the_solver_on_the_model_s_own_tfidf(trained):
    model, texts, targets, train, val, fitted, _, _ = trained
    features = wide.wide_rows(model, texts)
    estimator = wide.solve(fitted.solver, fitted.regulariser, features[train], targets[train], seed=0)
    _, wide_logits = wide.part_logits(model, text_input(texts[val]))
    np.testing.assert_allclose(wide_logits, estimator.decision_function(features[val]), atol=1e-4)
    assert fitted.regulariser in fitted.scores and fitted.val_weighted_f1 == max(fitted.scores.values())


def test_fusion_is_fitted_on_validation_and_never_below_the_wide_part_there(trained):
    *_, fusion, _ = trained
    assert fusion.wide_scale > 0, "the wide part counts in the output"
    assert fusion.fused_weighted_f1 >= fusion.wide_weighted_f1
    assert wide.check_fusion(fusion)


def test_a_bundle_loaded_in_a_fresh_process_scores_identically(trained):
    """The wide weights, the fusion, the vocabulary and idf are all in model.keras."""
    model, texts, _, _, val, _, _, bundle = trained
    sample = texts[val][:20].tolist()
    expected = model.predict(text_input(sample), verbose=0)
    script = ("import json, sys, numpy as np\n"
              "from rakuten_common.bundle import load_bundle\n"
              "import tensorflow as tf\n"
              "model, _, _ = load_bundle(sys.argv[1])\n"
              "texts = tf.constant(np.array(json.loads(sys.stdin.read()), dtype=str).reshape(-1, 1))\n"
              f"print(json.dumps({{'p': model.predict({{'text': texts}}, verbose=0).tolist(),"
              f" 'wide': float(np.abs(model.get_layer({WIDE_LAYER!r}).get_weights()[0]).sum())}}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(bundle)], input=json.dumps(sample), check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(fresh["p"]), expected, atol=1e-6)
    kernel = model.get_layer(WIDE_LAYER).get_weights()[0]
    assert fresh["wide"] == pytest.approx(float(np.abs(kernel).sum()), rel=1e-6) and fresh["wide"] > 0


def test_a_model_without_a_wide_part_has_no_wide_layer():
    model = build_model(ModelConfig(branches=("text",), max_tokens=100, text_units=8, fusion_units=8,
                                    wide_solver="none"), np.array(["a b c", "b c d"]))
    assert WIDE_LAYER not in {layer.name for layer in model.layers}
    assert model.get_layer("probabilities").__class__.__name__ == "Dense"


def test_a_fused_model_below_its_wide_part_logs_a_warning_with_both_figures(caplog):
    caplog.set_level(logging.INFO, logger="rakuten.training")
    assert not wide.check_fusion(wide.FusionFit(0.61, 0.72, 0.70, 1.0, 1.0))
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "0.7000 < 0.7200" in record.getMessage()
    caplog.clear()
    assert wide.check_fusion(wide.FusionFit(0.61, 0.72, 0.72, 1.0, 1.0))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
