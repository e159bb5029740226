"""Process control: the model server and the S3 API server, started with ``rakuten_common.processes``."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.serving.common import REPO, child_env, python_module
from rakuten_common.processes import ServerProcess, free_port, http_ok, wait_until

S3_BUCKET = "bench-models"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
READY_PATH = "/v2/health/ready"


@dataclass
class ModelServer:
    """A ``python -m model_server`` child process and where it answers."""

    process: ServerProcess
    url: str
    started: float  # time.monotonic() just before the process was created

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def wait_ready(self, timeout: float = 300, interval: float = 0.05) -> float:
        """Seconds from process start until ``/v2/health/ready`` answers 2xx (polled every ``interval``)."""
        try:
            wait_until(lambda: http_ok(self.url + READY_PATH, timeout=1.0), timeout, self.url + READY_PATH,
                       interval=interval, alive=self.process.exited)
        except TimeoutError as exc:
            self.process.stop()
            raise TimeoutError(f"{exc}:\n{self.process.logs()[-3000:]}") from None
        return time.monotonic() - self.started

    def stop(self) -> None:
        self.process.stop()


def start_model_server(model_uri: str, log_path: Path, server_args: list[str], *,
                       batch_size: int | None = None, env: dict[str, str] | None = None) -> ModelServer:
    """Start the model server on free ports (not waiting: call ``wait_ready``)."""
    port = free_port()
    args = [f"--model_uri={model_uri}", f"--http_port={port}", f"--grpc_port={free_port()}", "--drain_seconds=0"]
    if batch_size is not None:
        args.append(f"--max_batch_size={batch_size}")
    started = time.monotonic()
    process = ServerProcess(python_module("model_server", *args, *server_args), log_path,
                            env=child_env(env), cwd=REPO)
    return ModelServer(process, f"http://127.0.0.1:{port}", started)


@contextmanager
def running_model_server(model_uri: str, log_path: Path, server_args: list[str], *,
                         batch_size: int | None = None, env: dict[str, str] | None = None):
    """A ready model server for the ``with`` block; yields ``(server, seconds to ready)``."""
    server = start_model_server(model_uri, log_path, server_args, batch_size=batch_size, env=env)
    try:
        yield server, server.wait_ready()
    finally:
        server.stop()


@contextmanager
def s3_api_server(log_path: Path):
    """moto's S3 API server on 127.0.0.1 (MinIO's stand-in); yields the client environment."""
    with s3_api_process(log_path) as (env, _):
        yield env


@contextmanager
def s3_api_process(log_path: Path, idle: bool = False):
    """moto's S3 API server on 127.0.0.1; yields ``(client environment, process id)``. ``idle`` runs it
    in the kernel's idle scheduling class (``chrt --idle``: it gets only CPU nothing else wants): a
    stand-in for a MinIO on other machines, whose CPU is not the measured server's."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    if idle:
        command = ["chrt", "--idle", "0", *command]  # chrt execs: the process id stays moto's
    moto = ServerProcess(command, log_path, cwd=REPO)
    try:
        moto.wait_until_ready(f"{url}/moto-api/", timeout=60)
        yield {**S3_ENV, "AWS_ENDPOINT_URL": url}, moto.process.pid
    finally:
        moto.stop()


@contextmanager
def environment(values: dict[str, str]):
    """``os.environ`` updated for the ``with`` block, restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
