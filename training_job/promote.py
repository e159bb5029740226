"""Promote a model version to champion: judged by the gate, forced, or a rollback; then roll it out.

    python -m training_job.promote              # judge the current challenger against the champion
    python -m training_job.promote --force      # make the challenger champion without judging it
    python -m training_job.promote --to 3       # make registry version 3 (or a model version id) champion again

The registered model is ``rakuten-classifier`` in the MLflow Model Registry of
``MLFLOW_TRACKING_URI``; its alias ``challenger`` is the newest trained version, ``champion``
the one served. The gate (``training_job.promotion.gate``) re-scores both bundles on the evaluation split
of ``DATA_DIR``. A new champion gets the alias and the champion pointer next to its version in
the model store (``rakuten_common.champion``), which is what model servers load; with
``--inference-service`` it is then rolled out (``training_job.promotion.rollout``) and, if that fails,
the previous champion is restored. Every decision is recorded (``training_job.promotion.records``).

Exit codes: 0 promoted, or already champion; 3 refused by the gate; 4 promoted but the rollout
failed (the previous champion, if any, restored and serving again); 1 any other error (MLflow
unreachable: within --tracking-timeout, nothing moved); 2 bad arguments.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from rakuten_common.logs import configure_logging
from rakuten_common.options import HelpFormatter, add_options, from_args
from rakuten_common.tracking_server import bound_tracking_calls
from training_job.promotion.rollout import RolloutConfig
from training_job.promotion.settings import PromoteConfig

logger = logging.getLogger("rakuten.promote")


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


def main(argv: list[str] | None = None) -> int:
    config, rollout_config = parse_config(argv)
    configure_logging()
    bound_tracking_calls(config.tracking_timeout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training_job.promotion.flow import promote, write_termination_message

    configure_logging()  # again: importing MLflow installs its own handlers
    outcome = promote(config, rollout_config)
    write_termination_message(outcome.summary)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
