"""Real server processes on 127.0.0.1 for the tests, started with the project's one helper."""
from __future__ import annotations

import sys
from pathlib import Path

from rakuten_common.processes import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]


def start_s3_server(log_path: Path) -> tuple[ServerProcess, str]:
    """moto's S3 API server (MinIO's stand-in here: MinIO cannot be installed on these machines)."""
    port = free_port()
    server = ServerProcess([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                           log_path, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    server.wait_until_ready(f"{url}/moto-api/", timeout=60)
    return server, url


def start_model_server(model_uri: str, log_path: Path, env: dict[str, str] | None = None,
                       extra_args: list[str] | None = None, timeout: float = 240) -> tuple[ServerProcess, str]:
    """``python -m model_server`` on free ports; returns once ``/v2/health/ready`` answers.
    No drain period on stop (a test's own ``extra_args`` may set one)."""
    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess([sys.executable, "-m", "model_server", f"--model_uri={model_uri}",
                            f"--http_port={http_port}", f"--grpc_port={grpc_port}", "--drain_seconds=0",
                            *(extra_args or [])],
                           log_path, env={"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}, cwd=REPO)
    url = f"http://127.0.0.1:{http_port}"
    server.wait_until_ready(f"{url}/v2/health/ready", timeout)
    return server, url
