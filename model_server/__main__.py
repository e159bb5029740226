"""``python -m model_server``: load the newest model version and serve it with KServe."""
from __future__ import annotations

import logging
import sys
import warnings

import kserve

from model_server import app
from model_server.model import RakutenClassifier
from model_server.settings import build_parser, settings_from
from rakuten_common.artifacts import ArtifactError


# KServe 0.21's app uses ORJSONResponse, which FastAPI deprecates with a warning on every response.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers != 1:
        logging.getLogger("rakuten.model_server").warning(
            "--workers=%d ignored: one process per pod keeps batching and /metrics whole; "
            "scale with replicas (and --preprocess_workers threads) instead", args.workers)
    model = RakutenClassifier(settings_from(args))
    try:
        model.load()
    except ArtifactError as exc:
        logging.getLogger("rakuten.model_server").error("cannot load a model: %s", exc)
        return 1
    server = kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                                enable_grpc=args.enable_grpc, enable_latency_logging=args.enable_latency_logging)
    app.extend(kserve.model_server.app, server.dataplane, model.name)
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
