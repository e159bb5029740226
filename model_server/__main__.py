"""``python -m model_server``: load the model version and serve it with KServe (V2 REST + gRPC).

Arguments are parsed before anything heavy is imported, so ``--help`` and argument errors
answer at once.
"""
from __future__ import annotations

import logging
import os
import sys

from model_server.settings import Settings, parse_settings
from rakuten_common.logs import configure_logging

logger = logging.getLogger("rakuten.model_server")


def _import_kserve():
    """Import KServe without letting it parse our command line (it parses ``sys.argv`` on import)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
    finally:
        sys.argv = argv
    return kserve


def serve(settings: Settings) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _import_kserve()
    import warnings

    from model_server import access
    from model_server.model import RakutenClassifier
    from model_server.server import ModelServer
    from rakuten_common.artifacts import ArtifactError
    from rakuten_common.cpu import configure_tensorflow

    # KServe 0.21's app uses ORJSONResponse, which FastAPI deprecates with a warning on every response.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    configure_logging(settings.log_level, access_log=settings.access_log, timings=settings.enable_latency_logging)
    configure_tensorflow(settings.tf_intra_op_threads, settings.tf_inter_op_threads)  # before any op runs
    logging.getLogger("rakuten.access").setLevel(logging.INFO if settings.access_log else logging.WARNING)
    access.limit_refusal_lines(settings.refusal_log_lines_per_second)
    model = RakutenClassifier(settings)
    try:
        model.load()
    except ArtifactError as exc:
        logger.error("cannot load a model: %s", exc)
        return 1
    ModelServer(settings, model).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    configure_logging(settings.log_level)
    if settings.workers != 1:
        logger.warning("--workers=%d ignored: one process per pod keeps batching and /metrics whole; "
                       "scale with replicas (and --preprocess_workers threads) instead", settings.workers)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
