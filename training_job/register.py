"""Register a published model version the registry does not know, from its manifest.

    python -m training_job.register 20261129T041502Z --model-uri s3://rakuten-models/rakuten-classifier

A training run that published its version but could not register it (MLflow down, exit 5; or
killed in between) leaves a complete version in storage that the registry never saw: serving
never picks it as "the newest" while a registry is configured, and ``python -m
rakuten_common.gc`` lists it. This registers it as training would have: a new version of
``rakuten-classifier`` tagged from the manifest (storage URI, version id, dataset fingerprint,
git commit, key metrics), source the run's ``model`` artifact if the run holds one (else the
published bundle), alias ``challenger``; the promotion gate can then judge it. A version
already registered is left as it is.

Exit codes: 0 registered (or already registered); 1 the version is not complete in storage, or
the registry failed (within --tracking-timeout); 2 bad arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from rakuten_common.errors import RakutenError
from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args, option
from rakuten_common.tracking_server import (
    TRACKING_TIMEOUT,
    TRACKING_TIMEOUT_HELP,
    bound_tracking_calls,
)
from training_job.config import TrainConfig

logger = logging.getLogger("rakuten.registry")
_TRAINING = {f.name: f.default for f in TrainConfig.__dataclass_fields__.values()}


@dataclass(frozen=True)
class RegisterConfig:
    model_uri: str = option(_TRAINING["model_uri"], env="MODEL_URI", metavar="URI",
                            help="the prefix of versions the version was published under: a folder or s3://")
    tracking_timeout: int = option(_TRAINING["tracking_timeout"], env="TRACKING_TIMEOUT", type=TRACKING_TIMEOUT,
                                   metavar="SECONDS", help=TRACKING_TIMEOUT_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_job.register", formatter_class=HelpFormatter,
                                     description="\n\n".join(__doc__.split("\n\n")[i] for i in (0, 2, -1)))
    parser.add_argument("version", help="the version id (its folder name under --model-uri)")
    add_options(parser, RegisterConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = from_args(RegisterConfig, args)
    configure_logging()
    bound_tracking_calls(config.tracking_timeout)
    from training_job.training.registry import register_published

    configure_logging()  # again: importing MLflow installs its own handlers
    try:
        registered = register_published(config.model_uri, args.version)
    except RakutenError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("%s/%s is %s", config.model_uri, args.version, registered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
