"""Text quality: the project's training pipeline against a TF-IDF + LinearSVC baseline, same split.

    python benchmarks/text_quality.py DATA_DIR [--image-size 32] [--train-args "..."]

DATA_DIR holds a dataset in the raw Rakuten layout (X_train_update.csv, Y_train_CVw08PX.csv;
images optional: rows without one get a neutral placeholder photo, as for a text-only set).
One stratified split (80 % train / 20 % test, seeded) is carved out of it; then
  - the project's pipeline: `python -m training_job` with its defaults (image branch at
    --image-size) on the train part, and `python -m training_job.batch_predict` on the test part;
  - the baseline: scikit-learn TfidfVectorizer (word 1-2-grams, sublinear tf, min_df 2) +
    LinearSVC (C 0.5) on the same train part, with the project's own text cleaning
    (`product_text`);
and both weighted F1 on the same test rows are printed, with training times. For a wide & deep
model (the default), the published bundle's two parts are also scored alone on the same test
rows: its wide part (the linear layer on the in-graph TF-IDF vector) and its deep part (the
dense text + image branches), from the logits its fusion layer combines. The pipeline holds
out part of its train part for its fixed evaluation split and for early stopping; the baseline
trains on all of it. Training CPU time (user + system, from the child's resource usage) is
printed beside wall time: on a shared machine the wall time says little.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from rakuten_common.data_layout import LABEL_COLUMN, TEST, TRAIN  # noqa: E402
from rakuten_common.preprocessing import product_text  # noqa: E402


def placeholder(path: Path) -> Path:
    if not path.exists():
        buffer = io.BytesIO()
        Image.new("RGB", (500, 500), (200, 200, 200)).save(buffer, "JPEG")
        path.write_bytes(buffer.getvalue())
    return path


def write_split(source: Path, rows: pd.DataFrame, out: Path, split, neutral: Path, with_labels: bool) -> None:
    """``rows`` as ``split`` of a dataset in ``out``: CSV files, and each row's image (its own, or ``neutral``)."""
    (out / split.image_dir).mkdir(parents=True, exist_ok=True)
    rows.drop(columns=[LABEL_COLUMN]).to_csv(out / split.features_csv)
    if with_labels:
        rows[[LABEL_COLUMN]].to_csv(out / split.labels_csv)
    for imageid, productid in zip(rows["imageid"], rows["productid"]):
        original = TRAIN.image_path(source, imageid, productid)
        target = split.image_path(out, imageid, productid)
        if not target.exists():
            try:
                os.link(original if original.is_file() else neutral, target)
            except OSError:  # e.g. a file's hard-link limit (a placeholder-image copy of a text-only set)
                shutil.copyfile(original if original.is_file() else neutral, target)


def run(args: list[str], log: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``python args``; return its wall and CPU seconds (user + system, children included)."""
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:3])} failed ({done.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic() - started, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def part_predictions(store: Path, test: pd.DataFrame, test_dir: Path) -> dict[str, np.ndarray] | None:
    """The published model's wide and deep parts alone on the ``test`` rows (predicted codes), or
    ``None`` for a model without a wide part."""
    import keras
    import tensorflow as tf

    from rakuten_common.bundle import load_bundle
    from rakuten_common.preprocessing import decode_image
    from training_job.training.model import DEEP_LOGITS_LAYER, WIDE_LAYER

    (bundle,) = [m.parent for m in store.glob("*/manifest.json")]
    model, labels, spec = load_bundle(bundle)
    names = {layer.name for layer in model.layers}
    if WIDE_LAYER not in names:
        return None
    parts = keras.Model(model.input, [model.get_layer(DEEP_LOGITS_LAYER).output, model.get_layer(WIDE_LAYER).output])
    texts = np.array([product_text(d, s) for d, s in zip(test["designation"], test["description"])]).reshape(-1, 1)
    inputs = {"text": tf.constant(texts)}
    if "image" in spec.inputs:
        inputs["image"] = tf.constant(np.stack([decode_image(TEST.image_path(test_dir, i, p).read_bytes(), spec.image_size)
                                    for i, p in zip(test["imageid"], test["productid"])]))
    deep, wide = parts.predict({k: v for k, v in inputs.items() if k in spec.inputs}, batch_size=1024, verbose=0)
    codes = np.array(labels.codes)
    return {"deep": codes[np.argmax(deep, axis=1)], "wide": codes[np.argmax(wide, axis=1)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="dataset in the raw Rakuten layout")
    parser.add_argument("--image-size", type=int, default=32, help="image branch size for a text-focused run")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-args", default="", help="extra flags for python -m training_job")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the split, logs and model here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="text-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)

    table = pd.read_csv(args.data_dir / TRAIN.features_csv, index_col=0, keep_default_na=False,
                        dtype={"designation": str, "description": str})
    table = table.join(pd.read_csv(args.data_dir / TRAIN.labels_csv, index_col=0))
    train, test = train_test_split(table, test_size=args.test_fraction, random_state=args.seed,
                                   stratify=table[LABEL_COLUMN])
    neutral = placeholder(workdir / "placeholder.jpg")
    write_split(args.data_dir, train, workdir / "train", TRAIN, neutral, with_labels=True)
    write_split(args.data_dir, test, workdir / "test", TEST, neutral, with_labels=False)
    print(f"split: {len(train)} train / {len(test)} test rows, {table[LABEL_COLUMN].nunique()} classes "
          f"(stratified, seed {args.seed}); workdir {workdir}", flush=True)

    # -- the linear baseline, with the project's text cleaning ---------------------------------
    clean = lambda rows: [product_text(d, s) for d, s in zip(rows["designation"], rows["description"])]  # noqa: E731
    started = time.monotonic()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    baseline = LinearSVC(C=0.5).fit(vectorizer.fit_transform(clean(train)), train[LABEL_COLUMN])
    baseline_seconds = time.monotonic() - started
    baseline_pred = baseline.predict(vectorizer.transform(clean(test)))

    # -- the project's pipeline, defaults but the image size -----------------------------------
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    train_seconds, train_cpu = run(["-m", "training_job", "--data-dir", str(workdir / "train"), "--model-uri",
                         str(workdir / "store"), "--cache-dir", str(workdir / "cache"), "--image-size",
                         str(args.image_size), *args.train_args.split()], workdir / "train.log", env)
    run(["-m", "training_job.batch_predict", "--model-uri", str(workdir / "store"), "--data-dir",
         str(workdir / "test"), "--output", str(workdir / "predictions.csv"), "--cache-dir", str(workdir / "cache")],
        workdir / "predict.log", env)
    with open(workdir / "predictions.csv", newline="") as f:
        predicted = {int(r["productid"]): int(r["prdtypecode"]) for r in csv.DictReader(f)}
    truth = test[LABEL_COLUMN].to_numpy()
    ours = np.array([predicted[int(p)] for p in test["productid"]])

    scores = lambda predicted: {"weighted_f1": f1_score(truth, predicted, average="weighted"),  # noqa: E731
                                "accuracy": accuracy_score(truth, predicted)}
    figures = {
        "pipeline": {**scores(ours), "train_seconds": train_seconds, "train_cpu_seconds": train_cpu},
        "tfidf_linearsvc": {**scores(baseline_pred), "train_seconds": baseline_seconds},
        "train_rows": len(train), "test_rows": len(test), "image_size": args.image_size,
        "train_args": args.train_args,
    }
    rows = [("tfidf_linearsvc", "TF-IDF word 1-2 + LinearSVC")]
    parts = part_predictions(workdir / "store", test, workdir / "test")
    if parts:
        figures.update({f"{name}_part": scores(predicted) for name, predicted in parts.items()})
        rows += [("wide_part", "  its wide part alone"), ("deep_part", "  its deep part alone")]
    rows.append(("pipeline", f"project pipeline (defaults, {args.image_size} px)"))
    margin = figures["pipeline"]["weighted_f1"] - figures["tfidf_linearsvc"]["weighted_f1"]
    print(f"\n{'model':<34} {'weighted F1':>11} {'accuracy':>9} {'train s':>8} {'CPU s':>7}")
    for name, label in rows:
        f = figures[name]
        wall = f"{f['train_seconds']:>8.0f}" if "train_seconds" in f else f"{'':>8}"
        cpu = f"{f['train_cpu_seconds']:>7.0f}" if "train_cpu_seconds" in f else f"{'':>7}"
        print(f"{label:<34} {f['weighted_f1']:>11.4f} {f['accuracy']:>9.4f} {wall} {cpu}")
    print(f"margin over the baseline: {margin:+.4f} weighted F1")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
