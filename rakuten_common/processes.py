"""Start a server process and wait until it answers: one helper for the tests, the benchmark,
the demo, the chart's smoke test and the e2e checks (bounded waits, logs kept)."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` answers 2xx within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def wait_until(ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.5,
               alive: Callable[[], str | None] = lambda: None) -> float:
    """Poll ``ready()`` until it is true; return the seconds waited.

    ``alive()`` returns why waiting is pointless (e.g. the process exited), or ``None``.
    Raises ``TimeoutError`` after ``timeout`` seconds and ``RuntimeError`` when ``alive()`` objects.
    """
    started = time.monotonic()
    while True:
        problem = alive()
        if problem:
            raise RuntimeError(f"{what}: {problem}")
        if ready():
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)


class ServerProcess:
    """A child process serving HTTP, its output in ``log_path``."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.args, self.log_path = list(args), Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process's lifetime, closed by stop()
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})}, cwd=cwd)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def exited(self) -> str | None:
        if self.process.poll() is None:
            return None
        return f"{' '.join(self.args[:3])} exited with {self.process.returncode}:\n{self.logs()[-4000:]}"

    def wait_until_ready(self, url: str, timeout: float, interval: float = 0.5) -> float:
        """Poll ``url`` until it answers 2xx; return the seconds it took. Stops the process on timeout."""
        try:
            return wait_until(lambda: http_ok(url), timeout, url, interval=interval, alive=self.exited)
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}:\n{self.logs()[-4000:]}") from None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
