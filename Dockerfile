# The two images of the project, from one file: they share the base, the dependency layer
# (TensorFlow & co., built once) and the runtime setup; each adds its own dependencies and code.
#
#   make images                       # = both targets below (mk/images.mk), BuildKit needed
#   DOCKER_BUILDKIT=1 docker build --target training-job -t rakuten-serving/training-job:0.1.0 .
#   DOCKER_BUILDKIT=1 docker build --target model-server -t rakuten-serving/model-server:0.1.0 .
#
# training-job: `python -m training_job` (options from env vars, see --help); also runs the MLflow
#   server and `python -m training_job.batch_predict`.
# model-server: `python -m model_server`, a KServe V2 predictor (HTTP 8080, gRPC 8081), loading the
#   newest version under MODEL_URI (default /mnt/models, where KServe's storage initializer puts
#   storageUri); `python -m model_server.smoke_test` is the chart's `helm test`.
# Both: `python -m rakuten_common.wait_for` (the chart's init containers). They run as UID 10001
# with a read-only root file system: everything they write goes under /tmp (mount an emptyDir).
# Behind a TLS-inspecting proxy, pass its CA bundle as a build secret:
# `--secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt` (pip only, never in a layer).
# No `# syntax=` line on purpose: the engine's built-in Dockerfile frontend is used, so the build
# pulls nothing but BASE_IMAGE (which may be a local image: make base-image, debootstrap).

ARG BASE_IMAGE=python:3.11-slim

# ---- deps: a virtualenv with what both images need (wheels only) ------------------------------
FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PIP_NO_INPUT=1 \
    PIP_ONLY_BINARY=:all:
# python3 is /usr/local/bin/python3 on python:*-slim and /usr/bin/python3 on Debian: use PATH.
RUN python3 -m venv /opt/venv
COPY scripts/install-requirements.sh /usr/local/bin/
COPY requirements/base.in requirements/constraints.txt /tmp/requirements/
RUN --mount=type=secret,id=pip_cert,required=false \
    --mount=type=cache,id=rakuten-pip,target=/root/.cache/pip,sharing=locked \
    install-requirements.sh base

# ---- each image's own dependencies on top, then pruned --------------------------------------------
FROM deps AS training-deps
COPY requirements/train.in /tmp/requirements/
RUN --mount=type=secret,id=pip_cert,required=false \
    --mount=type=cache,id=rakuten-pip,target=/root/.cache/pip,sharing=locked \
    install-requirements.sh train --final

FROM deps AS server-deps
COPY requirements/serve.in /tmp/requirements/
RUN --mount=type=secret,id=pip_cert,required=false \
    --mount=type=cache,id=rakuten-pip,target=/root/.cache/pip,sharing=locked \
    install-requirements.sh serve --final

# ---- runtime: the non-root user and environment both images run with ----------------------------
FROM ${BASE_IMAGE} AS runtime
# python:*-slim carries pip/setuptools/wheel in the system site-packages: not needed at run time
# (a base whose pip belongs to the distribution keeps it: pip cannot remove that one).
RUN set -eu; \
    if python3 -m pip --version >/dev/null 2>&1; then \
      python3 -m pip uninstall -y -q --root-user-action=ignore pip setuptools wheel \
        || echo "note: the base image's pip stays"; \
    fi; \
    rm -rf /root/.cache; \
    groupadd --system --gid 10001 rakuten; \
    useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin rakuten
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    HOME=/tmp \
    TMPDIR=/tmp \
    KERAS_HOME=/tmp/keras \
    TF_CPP_MIN_LOG_LEVEL=2
# Relative defaults (mlruns.db, data/sample, model-store/) land in the writable /tmp.
WORKDIR /tmp

# ---- training-job ----------------------------------------------------------------------------
FROM runtime AS training-job
ENV MPLCONFIGDIR=/tmp/matplotlib \
    GIT_PYTHON_REFRESH=quiet
COPY --from=training-deps /opt/venv /opt/venv
COPY rakuten_common /app/rakuten_common
COPY training_job /app/training_job
# Byte-code compiled at build time: the root file system is read-only at run time.
RUN python -m compileall -q /app
USER 10001:10001
ARG GIT_COMMIT=unknown
ARG VERSION=0.1.0
# Logged to MLflow with every run (training_job/training/tracking.py).
ENV GIT_COMMIT=${GIT_COMMIT}
LABEL org.opencontainers.image.title="rakuten-training-job" \
      org.opencontainers.image.description="Trains the Rakuten France product classifier, tracks it in MLflow and publishes a versioned model to S3" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["python", "-m", "training_job"]

# ---- model-server ----------------------------------------------------------------------------
FROM runtime AS model-server
ENV MODEL_URI=/mnt/models \
    MODEL_CACHE_DIR=/tmp/rakuten-model-cache
COPY --from=server-deps /opt/venv /opt/venv
COPY rakuten_common /app/rakuten_common
COPY model_server /app/model_server
RUN python -m compileall -q /app
USER 10001:10001
# HTTP (REST V2, /metrics, health) and gRPC.
EXPOSE 8080 8081
ARG GIT_COMMIT=unknown
ARG VERSION=0.1.0
ENV GIT_COMMIT=${GIT_COMMIT}
LABEL org.opencontainers.image.title="rakuten-model-server" \
      org.opencontainers.image.description="KServe V2 predictor of the Rakuten France product classifier, with adaptive batching" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["python", "-m", "model_server"]
