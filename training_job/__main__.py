"""Entry point of the training container: ``python -m training_job [options]``.

Every option also reads an environment variable (shown in ``--help``), which is how the
Kubernetes Job and CronJob configure it. Arguments are parsed before TensorFlow is imported.

Exit codes: 0 published and registered; 1 the data, the storage, the tracking server (at the
start: nothing trained) or a setting is wrong (one-line reason); 2 a flag or environment
variable is invalid; 5 published but NOT registered (MLflow failed after training: the version is
complete in storage; ``python -m training_job.register VERSION`` registers it later).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rakuten_common.errors import RakutenError
from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args
from rakuten_common.tracking_server import bound_tracking_calls
from training_job.config import ModelConfig, QualityConfig, TrainConfig

logger = logging.getLogger("rakuten.training")
#: Exit code of a run whose version is published but not registered.
EXIT_NOT_REGISTERED = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training_job", formatter_class=HelpFormatter,
        description="Train the concatenated text+image Rakuten classifier, publish a new model version\n"
                    "to a local folder or s3://bucket/prefix, track it in MLflow and register it.\n"
                    "Every option can also be set by the environment variable named in its help.\n\n"
                    + __doc__.split("\n\n")[-1].strip())
    add_options(parser, TrainConfig)
    add_options(parser, ModelConfig, group_title="model")
    add_options(parser, QualityConfig, group_title="data quality (checked before training)")
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return from_args(TrainConfig, args, model=from_args(ModelConfig, args),
                         quality=from_args(QualityConfig, args))
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging()
    bound_tracking_calls(config.tracking_timeout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rakuten_common.cpu import configure_tensorflow
    from training_job import sample_data
    from training_job.data.dataset import has_dataset
    from training_job.data.source import is_remote
    from training_job.training.registry import NotRegisteredError
    from training_job.training.run import run

    configure_logging()  # again: importing MLflow installs its own handlers
    configure_tensorflow(config.tf_intra_op_threads, config.tf_inter_op_threads)  # before any op runs
    if config.generate_sample and not is_remote(config.data_dir) and not has_dataset(Path(config.data_dir)):
        logger.info("Generating a sample dataset of about %d rows in %s", config.generate_sample, config.data_dir)
        sample_data.generate(Path(config.data_dir), rows=config.generate_sample, seed=config.seed)
    try:
        result = run(config)
    except NotRegisteredError as exc:
        logger.error("%s", exc)
        return EXIT_NOT_REGISTERED
    except RakutenError as exc:
        logger.error("%s", exc)
        return 1
    if config.promote:
        from training_job.promotion.flow import promote_after_training

        return promote_after_training(config, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
