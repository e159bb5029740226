"""The two container images (targets of the one Dockerfile), built and run for real with a local
Docker engine.

Chain: start dockerd (scripts/start-dockerd.sh) -> offline Debian base image (make base-image,
debootstrap; nothing is pulled from a registry) -> `make image-training image-server` on that
base -> the training image trains on generated data and publishes a version to the S3 API
server -> the server image loads it from S3 and answers a V2 call from the host, and its
`model_server.smoke_test` passes against it. Both run as they would on Kubernetes: non-root,
read-only root file system, only /tmp writable; both carry the chart's `wait_for` probe.

Skipped when no Docker engine can be started, except under CI (env CI set), where that fails.
Env: RAKUTEN_TEST_BASE_IMAGE=python:3.11-slim uses that base instead of building one.
Build/run times and image sizes are written to <artifacts>/docker_timings.json.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from rakuten_common.labels import PRDTYPECODES
from rakuten_common.processes import free_port, http_ok, wait_until
from rakuten_common.v2_client import (
    Product,
    infer_request,
    infer_url,
    parse_response,
    post,
)
from tests.support.s3 import BUCKET
from tests.support.servers import REPO

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]

REGISTRY = "rakuten-serving"
TAG = "test"
IMAGES = {"training": f"{REGISTRY}/training-job:{TAG}", "server": f"{REGISTRY}/model-server:{TAG}"}
LOCAL_BASE = f"{REGISTRY}/base:bookworm"
MODEL_PREFIX = "docker-test"
MODEL_URI = f"s3://{BUCKET}/{MODEL_PREFIX}"
TIMINGS: dict[str, float | int | str] = {}
COMMIT = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "unknown"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must build and run the images, but Docker is unavailable: {reason}")
    pytest.skip(f"Docker is unavailable: {reason}")


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:]


def run_logged(args: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> None:
    """Run ``args`` (a process group of its own) with output in ``log``; fail with its tail.
    On timeout the whole group is killed, so no docker client or build outlives the test."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            pytest.fail(f"{' '.join(args)} still running after {timeout:.0f} s:\n{_tail(log.read_text(errors='replace'))}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {proc.returncode}:\n{_tail(log.read_text(errors='replace'))}")


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed ({done.returncode}):\n{_tail(done.stdout + done.stderr)}")
    return done


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


@pytest.fixture(scope="module")
def timings(artifacts_dir):
    yield TIMINGS
    (artifacts_dir / "docker_timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
    print("\ndocker timings:", json.dumps(TIMINGS, indent=2))


@pytest.fixture(scope="module")
def docker_engine(timings, artifacts_dir) -> None:
    """A running engine: started by the script (idempotent) unless one is there."""
    if shutil.which("docker") is None and not os.environ.get("CI"):
        _unavailable("no docker client on PATH (apt-get install docker.io)")
    start = time.monotonic()
    try:
        done = subprocess.run(["bash", str(REPO / "scripts/start-dockerd.sh")], capture_output=True, text=True,
                              timeout=180, env={**os.environ, "DOCKERD_TIMEOUT": "90",
                                                **({"DOCKERD_INSTALL": "1"} if os.environ.get("CI") else {})})
    except subprocess.TimeoutExpired:
        _unavailable("scripts/start-dockerd.sh did not finish in 180 s")
    if done.returncode != 0:
        _unavailable(f"scripts/start-dockerd.sh exited with {done.returncode}: {_tail(done.stdout + done.stderr, 1500)}")
    timings["dockerd_start_s"] = round(time.monotonic() - start, 1)


@pytest.fixture(scope="module")
def base_image(docker_engine, timings, artifacts_dir) -> str:
    """A base image built here from Debian packages (no registry), or RAKUTEN_TEST_BASE_IMAGE."""
    if os.environ.get("RAKUTEN_TEST_BASE_IMAGE"):
        return os.environ["RAKUTEN_TEST_BASE_IMAGE"]
    start = time.monotonic()
    run_logged(["make", "--no-print-directory", "base-image", f"BASE_IMAGE_LOCAL={LOCAL_BASE}"],
               artifacts_dir / "base_image.log", timeout=900)
    timings["base_image_s"] = round(time.monotonic() - start, 1)
    return LOCAL_BASE


@pytest.fixture(scope="module")
def images(base_image, timings, artifacts_dir) -> dict[str, str]:
    """Both images, built by the Makefile targets the README documents (build cache reused)."""
    common = [f"BASE_IMAGE={base_image}", f"REGISTRY={REGISTRY}", f"IMAGE_TAG={TAG}", f"GIT_COMMIT={COMMIT}",
              "DOCKER_BUILD_ARGS=--progress=plain"]
    for key, target in (("training", "image-training"), ("server", "image-server")):
        start = time.monotonic()
        run_logged(["make", "--no-print-directory", target, *common], artifacts_dir / f"{target}.log", timeout=1500)
        timings[f"{target}_s"] = round(time.monotonic() - start, 1)
        size = docker("image", "inspect", "-f", "{{.Size}}", IMAGES[key]).stdout.strip()
        timings[f"{target}_size_mb"] = round(int(size) / 1e6)
    return IMAGES


def test_one_dockerfile_builds_both_images():
    """Static: the two images are targets of the root Dockerfile, sharing its deps and runtime
    stages; no other Dockerfile; everything it COPYs from the context passes .dockerignore; the
    CA bundle only ever comes in as a BuildKit secret."""
    import re

    text = (REPO / "Dockerfile").read_text()
    stages = {name: parent for parent, name in re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)}
    assert stages["training-job"] == stages["model-server"] == "runtime"
    assert stages["training-deps"] == stages["server-deps"] == "deps"
    tracked = subprocess.run(["git", "ls-files", "*Dockerfile*"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert tracked == ["Dockerfile"], tracked
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in sources.split():
            assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} not in the build context"
    assert "pip_cert" in text and "ca-certificates.crt" not in re.sub(r"#.*", "", text)
    assert text.count("USER 10001:10001") == 2


def inspect(image: str) -> dict:
    return json.loads(docker("image", "inspect", image).stdout)[0]["Config"]


PROBE = r"""
import importlib.util, json, os, shutil, sys
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "executable": sys.executable,
    "tools": {t: shutil.which(t) for t in ("gcc", "cc", "c++", "g++", "make", "pip", "pip3")},
    "modules": {m: importlib.util.find_spec(m) is not None
                for m in ("pip", "rakuten_common", "rakuten_common.wait_for", "training_job", "model_server",
                          "tests", "pytest", "moto")},
    "writable": {p: os.access(p, os.W_OK) for p in ("/", "/opt/venv", "/app", "/tmp")},
    "env": {k: os.environ.get(k) for k in ("HOME", "TMPDIR", "MPLCONFIGDIR", "GIT_COMMIT")},
    "secret_left": os.path.exists("/run/secrets/pip_cert"),
    "tf_headers": os.path.isdir(os.path.join(sys.prefix, "lib/python3.11/site-packages/tensorflow/include")),
}))
"""


def probe(image: str) -> dict:
    done = docker("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python",
                  image, "-c", PROBE, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["training", "server"])
def test_image_runs_non_root_with_only_what_it_needs(images, kind):
    image = images[kind]
    config = inspect(image)
    package = {"training": "training_job", "server": "model_server"}[kind]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python", "-m", package]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == TAG
    assert labels["org.opencontainers.image.revision"] == COMMIT
    assert f"GIT_COMMIT={COMMIT}" in config["Env"]
    if kind == "server":
        assert set(config["ExposedPorts"]) == {"8080/tcp", "8081/tcp"}

    seen = probe(image)
    assert (seen["uid"], seen["gid"]) == (10001, 10001)
    assert seen["cwd"] == "/tmp" and seen["executable"] == "/opt/venv/bin/python"
    # No compiler, no make, no pip (not even as a module): nothing to build or install with.
    assert {tool: path for tool, path in seen["tools"].items() if path} == {}
    assert not seen["modules"]["pip"]
    # Only the packages this image runs; no tests, no test dependencies.
    other = {"training": "model_server", "server": "training_job"}[kind]
    assert seen["modules"]["rakuten_common"] and seen["modules"][package]
    assert seen["modules"]["rakuten_common.wait_for"], "the chart's init containers run it from both images"
    assert not any(seen["modules"][m] for m in (other, "tests", "pytest", "moto")), seen["modules"]
    # Read-only-root friendly: code and venv not writable by the runtime user, /tmp is.
    assert seen["writable"] == {"/": False, "/opt/venv": False, "/app": False, "/tmp": True}
    assert seen["env"]["HOME"] == "/tmp" and seen["env"]["TMPDIR"] == "/tmp"
    if kind == "training":
        assert seen["env"]["MPLCONFIGDIR"].startswith("/tmp/")
    # The pip CA bundle was a build secret, never a file of the image; C++ headers pruned.
    assert not seen["secret_left"] and not seen["tf_headers"]


@pytest.fixture(scope="module")
def trained(images, s3, timings, artifacts_dir) -> dict:
    """The training image, run like the Kubernetes Job: read-only root, /tmp tmpfs, S3 from env."""
    name = f"rakuten-test-train-{uuid.uuid4().hex[:8]}"
    env = {**s3.env, "MODEL_URI": MODEL_URI, "DATA_DIR": "/tmp/data", "GENERATE_SAMPLE_ROWS": "400",
           "EPOCHS": "2", "IMAGE_SIZE": "32", "MAX_TOKENS": "2000"}
    start = time.monotonic()
    try:
        done = docker("run", "--rm", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                      *env_args(env), images["training"], timeout=900, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the training container did not finish in 900 s")
    finally:
        remove_container(name)
    timings["training_run_s"] = round(time.monotonic() - start, 1)
    (artifacts_dir / "training_container.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, _tail(done.stdout + done.stderr)
    return {"stdout": done.stdout}


def test_images_share_the_base_and_runtime_layers(images):
    """Two targets of one Dockerfile: the layers up to the runtime stage are the same layers."""
    def layers(image: str) -> list[str]:
        return json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", image).stdout)

    training, server = layers(images["training"]), layers(images["server"])
    shared = 0
    while shared < min(len(training), len(server)) and training[shared] == server[shared]:
        shared += 1
    assert shared >= 2, f"no layer shared beyond the base: {training[:3]} / {server[:3]}"
    assert shared < len(training) and shared < len(server)


def test_probe_modules_answer_in_the_images(images):
    for image in images.values():
        done = docker("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python",
                      image, "-m", "rakuten_common.wait_for", "--help", timeout=60)
        assert "--bucket" in done.stdout and "--model" in done.stdout
    done = docker("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python",
                  images["server"], "-m", "model_server.smoke_test", "--help", timeout=60)
    assert "--url" in done.stdout


def test_training_image_publishes_a_version_to_s3(trained, images, s3_client):
    client = s3_client
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{MODEL_PREFIX}/").get("Contents", [])]
    manifests = [k for k in keys if k.endswith("/manifest.json")]
    assert manifests, keys
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=manifests[-1])["Body"].read())
    assert manifest["files"] and manifest["mlflow_run_id"]
    # The commit baked into the image (ARG/ENV GIT_COMMIT) is the one the run recorded.
    image_env = dict(e.split("=", 1) for e in inspect(images["training"])["Env"])
    assert manifest["git_commit"] == image_env["GIT_COMMIT"]
    assert "is complete" in trained["stdout"]


def jpeg() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (500, 500), (235, 235, 240))
    ImageDraw.Draw(image).ellipse((80, 120, 420, 380), fill=(30, 110, 200))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_server_image_answers_a_v2_call(trained, images, s3, timings, artifacts_dir):
    """The server image loads the published version from S3 and answers from the host."""
    name = f"rakuten-test-server-{uuid.uuid4().hex[:8]}"
    http_port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    start = time.monotonic()
    try:
        docker("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
               *env_args({**s3.env, "MODEL_URI": MODEL_URI}), images["server"],
               f"--http_port={http_port}", f"--grpc_port={grpc_port}", timeout=120)
        def container_gone() -> str | None:
            state = docker("inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", name).stdout.split()
            if state[0] == "true":
                return None
            logs = docker("logs", name, check=False)
            return f"server container exited ({state[1]}):\n{_tail(logs.stdout + logs.stderr)}"

        try:
            wait_until(lambda: http_ok(f"{url}/v2/health/ready"), 240, "server container", alive=container_gone)
        except TimeoutError:
            logs = docker("logs", name, check=False)
            raise AssertionError(f"not ready after 240 s:\n{_tail(logs.stdout + logs.stderr)}") from None
        timings["server_ready_s"] = round(time.monotonic() - start, 1)

        product = Product("Piscine tubulaire ronde 3,66 m", "<p>Filtration &agrave; cartouche incluse</p>", jpeg())
        status, answer = post(infer_url(url), json.dumps(infer_request([product], top_k=3)).encode(),
                              {"Content-Type": "application/json"})
        assert status == 200, answer
        (top,) = parse_response(answer)
        assert len(top) == 3
        assert all(code in PRDTYPECODES for code, _ in top)
        assert all(0.0 <= p <= 1.0 for _, p in top) and top[0][1] >= top[1][1] >= top[2][1]
        # the chart's `helm test` command, from the same image, against it
        smoke = docker("run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python",
                       images["server"], "-m", "model_server.smoke_test", f"--url={url}", timeout=180, check=False)
        assert smoke.returncode == 0 and "ok: infer" in smoke.stdout, _tail(smoke.stdout + smoke.stderr)
    finally:
        logs = docker("logs", name, timeout=30, check=False)
        (artifacts_dir / "server_container.log").write_text(logs.stdout + logs.stderr)
        remove_container(name)
