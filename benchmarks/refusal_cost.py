"""CPU cost of one refused request inside the server process: the real HTTP protocol class and
gate, admission held full, a fake transport (no sockets), the log written to a file.

Under overload most requests are refusals, and each one is paid for on the event loop that also
drives the admitted ones (docs/performance.md, "Refusals without a log line each"). Prints
microseconds per refusal with an access line for every refusal, with the default limit
(``--refusal_log_lines_per_second`` 10) and with the access log off.

    python benchmarks/refusal_cost.py [--refusals 20000]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import uvicorn
from uvicorn.server import ServerState as UvicornState

from model_server import access
from model_server.admission import Admission
from model_server.auth import ApiKeys, RateLimiter
from model_server.connections import protocol_class
from model_server.request_gate import Gate, ServerState
from model_server.settings import Settings
from rakuten_common.logs import FORMAT

BODY = b'{"inputs": []}'.ljust(12_000)
REQUEST = (b"POST /v2/models/rakuten-classifier/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           b"Content-Type: application/json\r\ntimeout: 1\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY


class _Transport:
    """What the protocol needs of a socket transport; counts the answers written."""

    def __init__(self):
        self.writes, self.closing = 0, False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def close(self) -> None:
        self.closing = True

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _protocol(settings: Settings):
    admission = Admission(1, 1 << 30, settings.model_name)
    admission.rows = 1  # full: every request is refused
    gate = Gate(None, settings, ServerState(lambda: None), admission, ApiKeys([], None), RateLimiter(0, 0))
    config = uvicorn.Config(gate, http=protocol_class(gate.connection_limits()), ws="none", lifespan="off", log_config=None,
                            access_log=False, loop="none")
    config.load()
    return config.http_protocol_class(config=config, server_state=UvicornState(), app_state={})


async def _microseconds_per_refusal(settings: Settings, refusals: int) -> float:
    protocol, transport = _protocol(settings), _Transport()
    protocol.connection_made(transport)
    for _ in range(1000):  # warm-up
        protocol.data_received(REQUEST)
    started = time.perf_counter()
    for _ in range(refusals):
        protocol.data_received(REQUEST)
    elapsed = time.perf_counter() - started
    if transport.closing or transport.writes != refusals + 1000:
        raise RuntimeError(f"expected {refusals + 1000} refusals on one connection, got {transport.writes}")
    return elapsed / refusals * 1e6


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a KServe dependency
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refusals", type=int, default=20_000, help="refusals timed per case (default: 20000)")
    args = parser.parse_args(argv)
    settings = Settings(model_uri="unused")
    with tempfile.TemporaryDirectory() as folder:
        handler = logging.FileHandler(Path(folder) / "server.log")
        handler.setFormatter(logging.Formatter(FORMAT))
        root = logging.getLogger()
        root.handlers, root.level = [handler], logging.INFO
        cases = [("an access line for every refusal", 0, logging.INFO),
                 ("default: at most 10 lines a second", 10, logging.INFO),
                 ("access log off", 10, logging.WARNING)]
        print(f"In-process CPU per refused request (protocol + gate, no sockets), {args.refusals:,} each:")
        for name, per_second, level in cases:
            access.limit_refusal_lines(per_second)
            logging.getLogger("rakuten.access").setLevel(level)
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:  # the server's loop
                micros = runner.run(_microseconds_per_refusal(settings, args.refusals))
            print(f"  {name:<40} {micros:6.1f} µs")
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
