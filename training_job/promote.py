"""Promote a model version to champion: judged by the gate, forced, or a rollback; then roll it out.

    python -m training_job.promote              # judge the current challenger against the champion
    python -m training_job.promote --force      # make the challenger champion without judging it
    python -m training_job.promote --to 3       # make registry version 3 (or a model version id) champion again

The registered model is ``rakuten-classifier`` in the MLflow Model Registry of
``MLFLOW_TRACKING_URI``; its alias ``challenger`` is the newest trained version, ``champion``
the one served. The gate (``training_job.gate``) re-scores both bundles on the evaluation split
of ``DATA_DIR``. A new champion gets the alias and the champion pointer next to its version in
the model store (``rakuten_common.champion``), which is what model servers load; with
``--inference-service`` it is then rolled out (``training_job.rollout``) and, if that fails,
the previous champion is restored. Every decision is recorded (``training_job.promotions``).

Exit codes: 0 promoted, or already champion; 3 refused by the gate; 4 promoted but the rollout
failed (the previous champion, if any, restored and serving again); 1 any other error; 2 bad
arguments.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args, option
from training_job.config import TrainConfig
from training_job.rollout import RolloutConfig

logger = logging.getLogger("rakuten.promote")

EXIT_OK, EXIT_ERROR, EXIT_REFUSED, EXIT_ROLLED_BACK = 0, 1, 3, 4
#: Products per model call when re-scoring.
EVAL_BATCH_SIZE = 64
TERMINATION_LOG = Path("/dev/termination-log")


def _training_default(name: str):
    """The training job's default of a setting both share (declared once, in TrainConfig)."""
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


@dataclass(frozen=True)
class PromoteConfig:
    force: bool = option(False, help="promote the challenger without judging it (recorded as forced)")
    to: str = option("", metavar="VERSION",
                     help="make this registry version (number, or model version id) champion: a rollback, not judged")
    tolerance: float = option(0.01, env="PROMOTE_TOLERANCE",
                              help="promote when the challenger's weighted F1 is at least the champion's minus this")
    recall_floor: float = option(0.2, env="PROMOTE_RECALL_FLOOR",
                                 help="refuse when a class's recall falls below this (and below the champion's)")
    min_class_support: int = option(5, env="PROMOTE_MIN_CLASS_SUPPORT",
                                    help="classes with fewer evaluation rows are not held to the recall floor")
    data_dir: str = option(_training_default("data_dir"), env="DATA_DIR", metavar="DIR|URI",
                           help="dataset whose evaluation split both models are scored on: a folder or s3://")
    eval_fraction: float = option(_training_default("eval_fraction"), env="EVAL_FRACTION",
                                  help="share of products in the evaluation split (as in training)")
    cache_dir: Path = option(_training_default("cache_dir"), env="CACHE_DIR", metavar="DIR",
                             help="where s3:// datasets and models are copied")
    workers: int = option(os.cpu_count() or 2, env="PREPROCESS_WORKERS", shown="the CPU count",
                          help="threads decoding images")
    experiment: str = option("rakuten-classifier-promotions", env="PROMOTIONS_EXPERIMENT",
                             help="MLflow experiment recording every decision")


@dataclass
class Outcome:
    exit_code: int
    summary: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_job.promote", formatter_class=HelpFormatter,
                                     description="\n\n".join(__doc__.split("\n\n")[i] for i in (0, 1, -1)))
    add_options(parser, PromoteConfig)
    add_options(parser, RolloutConfig, group_title="rollout (Kubernetes)")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[PromoteConfig, RolloutConfig]:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = from_args(PromoteConfig, args)
    if config.force and config.to:
        parser.error("--force and --to exclude each other")
    if config.tolerance < 0 or not 0 <= config.recall_floor <= 1 or not 0 <= config.eval_fraction < 1:
        parser.error("--tolerance must be >= 0, --recall-floor and --eval-fraction within [0, 1)")
    return config, from_args(RolloutConfig, args)


def write_termination_message(text: str) -> None:
    """The outcome where ``kubectl describe pod`` shows it (the container's termination message)."""
    try:
        if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
            TERMINATION_LOG.write_text(text[:4000] + "\n")
    except OSError:
        pass


def promote_after_training(train: TrainConfig, result) -> int:
    """The gate at the end of a training run (``--promote``): the promotion settings from the
    environment, the dataset, evaluation split and cache of the run. A refusal is a normal end of a
    training run (exit 0, recorded like any decision); a rolled-back rollout exits 4."""
    from training_job.lifecycle import promote

    args = build_parser().parse_args([])
    config = dataclasses.replace(from_args(PromoteConfig, args), data_dir=str(train.data_dir),
                                 eval_fraction=train.eval_fraction, cache_dir=train.cache_dir)
    outcome = promote(config, from_args(RolloutConfig, args))
    write_termination_message(f"trained {result.version_uri}; {outcome.summary}")
    return EXIT_OK if outcome.exit_code == EXIT_REFUSED else outcome.exit_code


def main(argv: list[str] | None = None) -> int:
    config, rollout_config = parse_config(argv)
    configure_logging()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training_job.lifecycle import promote

    configure_logging()  # again: importing MLflow installs its own handlers
    outcome = promote(config, rollout_config)
    write_termination_message(outcome.summary)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
