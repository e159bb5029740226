"""The server process: KServe's data plane behind our gate, on uvicorn and gRPC, with a graceful stop.

KServe 0.21's ``ModelServer`` builds the uvicorn config itself (no header, body or connection
limits), mounts the repository API on REST and gRPC, and stops ~0.1 s after SIGTERM without
failing readiness first. Here the same parts (``DataPlane``, ``ModelRepository``, V2
endpoints, gRPC servicer) are composed with:

- the gate (``model_server.request_gate``) and the guarded HTTP protocol (``model_server.connections``);
- the repository API only with ``--enable_repository_api``;
- ``/metrics`` on its own port and thread with ``--metrics_port``;
- on SIGTERM (or SIGINT): readiness fails at once (REST and gRPC), requests are served for
  ``--drain_seconds``, then both servers stop, giving requests in progress up to
  ``--shutdown_timeout_seconds``. A second signal stops at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import uvicorn
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from model_server.admission import Admission
from model_server.app import build_app
from model_server.auth import ApiKeys, RateLimiter
from model_server.connections import protocol_class
from model_server.request_gate import Gate, ServerState
from model_server.settings import Settings

logger = logging.getLogger("rakuten.model_server")


class _Uvicorn(uvicorn.Server):
    """Uvicorn without its own signal handlers: ``ModelServer.run`` handles SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class ModelServer:
    """One model behind REST (and gRPC) with admission control, authentication and a graceful stop."""

    def __init__(self, settings: Settings, model):
        self.settings, self.model = settings, model
        self.repository = ModelRepository()
        self.repository.update(model)
        self.dataplane = DataPlane(model_registry=self.repository)
        self.repository_extension = (ModelRepositoryExtension(model_registry=self.repository)
                                     if settings.enable_repository_api else None)
        self.admission = Admission(settings.max_queued_rows, settings.max_inflight_bytes, settings.model_name)
        self.keys = ApiKeys(settings.api_key_list, settings.api_keys_file)
        self.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        if self.limiter.enabled and not self.keys.enabled:
            logger.warning("--rate_limit_rps applies per API key: without keys it has no effect")
        self.state = ServerState(self._not_ready_reason)
        model.enable_latency_logging = settings.enable_latency_logging
        app = build_app(self.dataplane, self.admission, self.repository_extension, settings.enable_latency_logging)
        self.gate = Gate(app, settings, self.state, self.admission, self.keys, self.limiter)
        self._http: _Uvicorn | None = None
        self._grpc: Any = None  # grpc.aio.Server once started
        self._stopping: asyncio.Task | None = None

    def _not_ready_reason(self) -> str | None:
        if self.repository.get_model(self.settings.model_name) is not self.model or not self.model.can_answer():
            return f"model {self.settings.model_name} is not loaded"
        return None

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until stopped by a signal (blocks)."""
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a KServe dependency
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(self.serve())

    async def serve(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_stop, sig)
        if settings.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(settings.metrics_port)
            logger.info("Serving /metrics on port %d", settings.metrics_port)
        config = uvicorn.Config(self.gate, host="0.0.0.0", port=settings.http_port,
                                http=protocol_class(self.gate.connection_limits()),
                                ws="none", lifespan="off", log_config=None, access_log=False, server_header=False,
                                timeout_keep_alive=settings.timeout_keep_alive, loop="none",
                                timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_seconds)))
        self._http = _Uvicorn(config)
        servers = [self._http.serve()]
        if settings.enable_grpc:
            from model_server.grpc_service import start_grpc_server

            self._grpc = await start_grpc_server(self, settings)
            servers.append(self._grpc.wait_for_termination())
        logger.info("Serving model %s on HTTP port %d%s", settings.model_name, settings.http_port,
                    f" and gRPC port {settings.grpc_port}" if settings.enable_grpc else "")
        await asyncio.gather(*servers)
        self.model.pool.close()
        logger.info("Server stopped")

    # -- stopping --------------------------------------------------------------------------------
    def begin_stop(self, sig: int = signal.SIGTERM) -> None:
        """First signal: fail readiness, drain, stop. Second: stop now."""
        if self._stopping is not None:
            logger.warning("%s again: stopping now", signal.Signals(sig).name)
            if self._http is not None:
                self._http.force_exit = self._http.should_exit = True
            if self._grpc is not None:
                asyncio.get_running_loop().create_task(self._grpc.stop(0))
            return
        self.state.draining = True
        logger.info("%s: readiness now fails; serving for %.1f s more (--drain_seconds), then stopping",
                    signal.Signals(sig).name, self.settings.drain_seconds)
        self._stopping = asyncio.get_running_loop().create_task(self._drain_then_stop())

    async def _drain_then_stop(self) -> None:
        await asyncio.sleep(self.settings.drain_seconds)
        logger.info("Drain period over: stopping (requests in progress get up to %.0f s)",
                    self.settings.shutdown_timeout_seconds)
        if self._http is not None:
            self._http.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(self.settings.shutdown_timeout_seconds)
