"""The benchmarks' command-line options, each declared once (``rakuten_common.options``)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from rakuten_common.bundle import MODEL_NAME
from rakuten_common.options import HelpFormatter, add_options, from_args, option


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def float_list(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def word_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclass(frozen=True)
class CommonSettings:
    """What both benchmarks need: the model, the products, the server and where to keep things."""

    model_uri: str = option(f"model-store/{MODEL_NAME}", env="MODEL_URI", metavar="URI",
                            help="model folder, prefix of versions or s3:// URI (as the server takes it)")
    quick: bool = option(False, help="short run: a smoke check")
    json: Path | None = option(None, type=Path, help="write the full results as JSON here")
    data_dir: Path | None = option(None, type=Path, metavar="DIR", shown="generated products",
                                   help="take products from this dataset folder (Rakuten layout)")
    products: int = option(64, help="distinct products")
    top_k: int = option(1, help="top_k request parameter")
    server_args: str = option("", metavar="ARGS", help="extra model server arguments, e.g. '--max_batch_time_ms 2'")
    workdir: Path | None = option(None, type=Path, metavar="DIR", shown="a temporary folder, removed after a good run",
                                  help="keep logs, profiles and caches here")


@dataclass(frozen=True)
class ServingSettings(CommonSettings):
    """``benchmarks/serving_benchmark.py``: ceiling, served, cold start."""

    duration: float | None = option(None, type=float, shown="10, --quick 3", help="seconds measured per cell")
    warmup: float | None = option(None, type=float, shown="2, --quick 1", help="seconds of load before each cell")
    profile: bool = option(False, help="py-spy profile of the server under load at c=32")
    concurrency: tuple[int, ...] = option((1, 8, 32), type=int_list, metavar="LIST", shown="1,8,32",
                                          help="client concurrencies")
    batch_sizes: tuple[int, ...] | None = option(None, type=int_list, metavar="LIST",
                                                 shown="1,8,32,64, --quick 1,32", help="ceiling batch sizes")
    payloads: tuple[str, ...] = option(("base64", "binary"), type=word_list, metavar="LIST", shown="base64,binary",
                                       help="request forms: base64 JSON, binary tensor data extension")
    cold_starts: int | None = option(None, type=int, shown="2, --quick 1", help="cold starts from S3")
    skip: tuple[str, ...] = option((), type=word_list, metavar="LIST", shown="none",
                                   help="parts to skip: ceiling,served,cold")

    def resolved(self) -> ServingSettings:
        """The quick/full defaults filled in."""
        return replace(self, duration=self.duration or (3.0 if self.quick else 10.0),
                       warmup=self.warmup if self.warmup is not None else (1.0 if self.quick else 2.0),
                       batch_sizes=self.batch_sizes or ((1, 32) if self.quick else (1, 8, 32, 64)),
                       cold_starts=self.cold_starts if self.cold_starts is not None else (1 if self.quick else 2))


@dataclass(frozen=True)
class OverloadSettings(CommonSettings):
    """``benchmarks/overload.py``: capacity, then open-loop load at multiples of it."""

    url: str | None = option(None, metavar="URL", shown="start a server from --model-uri",
                             help="measure a running server instead (RSS from --server-pid or its /metrics)")
    server_pid: int | None = option(None, type=int, metavar="PID", help="pid of the --url server, for RSS from /proc")
    capacity: float | None = option(None, type=float, metavar="REQ/S", shown="measured",
                                    help="offered rates are multiples of this instead of a measured capacity")
    capacity_concurrency: int = option(32, help="closed-loop clients measuring capacity")
    capacity_duration: float | None = option(None, type=float, shown="10, --quick 5",
                                             help="seconds measured for capacity (after --warmup)")
    warmup: float = option(2.0, help="seconds of closed-loop load before capacity is measured")
    loads: tuple[float, ...] = option((1.0, 4.0), type=float_list, metavar="LIST", shown="1,4",
                                      help="offered rates, as multiples of capacity")
    duration: float | None = option(None, type=float, shown="20, --quick 8", help="seconds of open-loop load per rate")
    deadline: float = option(1.0, help="client deadline in seconds: an answer later than this is a timeout")
    timeout_header: str = option("timeout", metavar="NAME",
                                 help="request header telling the server the deadline in seconds (empty: none)")
    clients: int = option(2, help="load-generator processes (each an asyncio loop)")
    server_cpus: tuple[int, ...] = option((), type=int_list, metavar="LIST", shown="any",
                                          help="CPUs the started server may run on, e.g. 0 (with --client-cpus: "
                                               "client and server no longer take CPU from each other)")
    client_cpus: tuple[int, ...] = option((), type=int_list, metavar="LIST", shown="any",
                                          help="CPUs the load generator, probes and this script may run on, e.g. 1")
    probe_interval: float = option(0.25, help="seconds between probes of /v2/health/ready and /metrics")
    memory_limit_mb: int = option(2048, help="RSS bound of the targets (the chart's 2Gi limit); a local server "
                                             "above it is killed, as the kernel would in the pod (0: never)")
    drain_timeout: float = option(120.0, help="max seconds to wait after a rate for the server to go idle")
    payload: str = option("binary", choices=("base64", "binary"), help="request form")
    seed: int = option(0, help="seed of the arrival times and products")
    check_targets: bool = option(False, help="exit 1 when a target of issue 10 is missed")

    def resolved(self) -> OverloadSettings:
        return replace(self, duration=self.duration or (8.0 if self.quick else 20.0),
                       capacity_duration=self.capacity_duration or (5.0 if self.quick else 10.0))


def parse(cls: type, argv: list[str] | None, description: str, epilog: str | None = None):
    """Parse ``argv`` into ``cls`` (quick/full defaults resolved)."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=HelpFormatter)
    add_options(parser, cls)
    return from_args(cls, parser.parse_args(argv)).resolved()
