"""Entry point of the training container: ``python -m training_job [options]``.

Every option also reads an environment variable (shown in ``--help``), which is how the
Kubernetes Job and CronJob configure it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rakuten_common.artifacts import ArtifactError
from rakuten_common.env import env_default
from rakuten_common.storage import StorageError
from training_job import sample_data
from training_job.dataset import X_TRAIN, DatasetError
from training_job.model import BACKBONES, ModelConfig
from training_job.train import TrainConfig, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training_job", description=(
        "Train the concatenated text+image Rakuten classifier, track it in MLflow and "
        "publish a new model version to a local folder or s3://bucket/prefix."))
    a = p.add_argument
    a("--data-dir", type=Path, default=Path(env_default("DATA_DIR", "data/sample")),
      help="folder with X_train_update.csv, Y_train_CVw08PX.csv, images/image_train/ [DATA_DIR]")
    a("--model-uri", default=env_default("MODEL_URI", "model-store/rakuten-classifier"),
      help="where versions are published: a folder or s3://bucket/prefix [MODEL_URI]")
    a("--generate-sample", type=int, default=env_default("GENERATE_SAMPLE_ROWS", 0), metavar="ROWS",
      help="first write a sample dataset of about ROWS rows into --data-dir if it has none [GENERATE_SAMPLE_ROWS]")
    a("--epochs", type=int, default=env_default("EPOCHS", 8), help="[EPOCHS]")
    a("--batch-size", type=int, default=env_default("BATCH_SIZE", 32), help="[BATCH_SIZE]")
    a("--learning-rate", type=float, default=env_default("LEARNING_RATE", 1e-3), help="[LEARNING_RATE]")
    a("--val-fraction", type=float, default=env_default("VAL_FRACTION", 0.2), help="stratified validation share [VAL_FRACTION]")
    a("--max-rows", type=int, default=env_default("MAX_ROWS", 0), help="use only the first N rows, 0 = all [MAX_ROWS]")
    a("--image-size", type=int, default=env_default("IMAGE_SIZE", 128), help="image side in pixels [IMAGE_SIZE]")
    a("--sequence-length", type=int, default=env_default("SEQUENCE_LENGTH", 64), help="tokens kept per product [SEQUENCE_LENGTH]")
    a("--max-tokens", type=int, default=env_default("MAX_TOKENS", 20000), help="vocabulary size [MAX_TOKENS]")
    a("--backbone", default=env_default("IMAGE_BACKBONE", "cnn"), choices=["cnn", *BACKBONES],
      help="image branch: a small CNN, or a keras.applications backbone [IMAGE_BACKBONE]")
    a("--backbone-weights", type=Path, default=env_default("BACKBONE_WEIGHTS", None),
      help="pretrained weights file for --backbone (frozen); nothing is downloaded [BACKBONE_WEIGHTS]")
    a("--ablation", action="store_true", default=env_default("ABLATION", "") == "true",
      help="also train text-only and image-only models and log their F1 [ABLATION=true]")
    a("--seed", type=int, default=env_default("SEED", 0), help="[SEED]")
    a("--experiment", default=env_default("MLFLOW_EXPERIMENT_NAME", "rakuten-classifier"), help="[MLFLOW_EXPERIMENT_NAME]")
    a("--version", default=env_default("MODEL_VERSION", None), help="version id, default a UTC timestamp [MODEL_VERSION]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.generate_sample and not (args.data_dir / X_TRAIN).exists():
        print(f"Generating a sample dataset of about {args.generate_sample} rows in {args.data_dir}", flush=True)
        sample_data.generate(args.data_dir, rows=args.generate_sample, seed=args.seed)
    model = ModelConfig(image_size=args.image_size, sequence_length=args.sequence_length,
                        max_tokens=args.max_tokens, backbone=args.backbone,
                        backbone_weights=args.backbone_weights)
    config = TrainConfig(data_dir=args.data_dir, model_uri=args.model_uri, model=model, epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.learning_rate,
                         val_fraction=args.val_fraction, seed=args.seed, max_rows=args.max_rows or None,
                         ablation=args.ablation, experiment=args.experiment, version=args.version)
    try:
        run(config)
    except (DatasetError, ArtifactError, StorageError, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
