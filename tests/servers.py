"""Start and stop real server processes on 127.0.0.1 for the tests (bounded waits, logs kept)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


class ServerProcess:
    """A child process serving HTTP; ``wait_until(url)`` polls until it answers 2xx."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.args, self.log_path = args, Path(log_path)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})}, cwd=cwd or REPO)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_until(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args[:3]} exited with {self.process.returncode}:\n{self.logs()[-4000:]}")
            if http_ok(url):
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{url} not ready after {timeout:.0f} s:\n{self.logs()[-4000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def start_s3_server(log_path: Path) -> tuple[ServerProcess, str]:
    """moto's S3 API server (MinIO's stand-in here: MinIO cannot be installed on these machines)."""
    port = free_port()
    server = ServerProcess([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                           log_path)
    url = f"http://127.0.0.1:{port}"
    server.wait_until(f"{url}/moto-api/", timeout=60)
    return server, url


def start_model_server(model_uri: str, log_path: Path, env: dict[str, str] | None = None,
                       extra_args: list[str] | None = None, timeout: float = 240) -> tuple[ServerProcess, str]:
    """``python -m model_server`` on free ports; returns once ``/v2/health/ready`` answers."""
    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess([sys.executable, "-m", "model_server", f"--model_uri={model_uri}",
                            f"--http_port={http_port}", f"--grpc_port={grpc_port}", *(extra_args or [])],
                           log_path, env={"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    url = f"http://127.0.0.1:{http_port}"
    server.wait_until(f"{url}/v2/health/ready", timeout)
    return server, url
