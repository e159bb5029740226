# Container images of the training job and the model server: two targets of the one Dockerfile
# at the repo root (training-job, model-server), sharing the dependency and runtime layers.
# Build context = the repo root (.dockerignore allow-lists what is sent). The Helm chart and
# mk/cluster.mk refer to these same names: REGISTRY/<name>:IMAGE_TAG.
#
#   make images                                    # from python:3.11-slim (needs a registry)
#   make base-image images BASE_IMAGE=rakuten-serving/base:bookworm   # offline: Debian base via debootstrap

REGISTRY       ?= rakuten-serving
IMAGE_TAG      ?= 0.1.0
TRAINING_IMAGE ?= $(REGISTRY)/training-job:$(IMAGE_TAG)
SERVER_IMAGE   ?= $(REGISTRY)/model-server:$(IMAGE_TAG)
BASE_IMAGE     ?= python:3.11-slim
# What `make base-image` builds (debootstrap bookworm + python3, no registry involved).
BASE_IMAGE_LOCAL ?= $(REGISTRY)/base:bookworm

# A Docker client that builds with BuildKit (the Dockerfile uses RUN --mount): one with the
# buildx plugin, else a pre-23 client, whose built-in BuildKit client needs no plugin (Debian
# bookworm's docker.io, /usr/bin/docker). A 23+ client without buildx can only use the legacy
# builder, which cannot run this Dockerfile.
# Computed once, on first use (`make help` does not run it).
DOCKER ?= $(eval DOCKER := $(shell for d in docker /usr/bin/docker; do \
	  command -v $$d >/dev/null 2>&1 || continue; \
	  if $$d buildx version >/dev/null 2>&1; then echo $$d; exit; fi; \
	  case "$$($$d --version)" in (*" version 1"[89].*|*" version 2"[012].*) echo $$d; exit;; esac; \
	done; echo docker))$(DOCKER)
# The CA bundle pip needs inside the build (a BuildKit secret: used by pip, never stored in a
# layer). Default: $PIP_CERT, else the system bundle where there is one. Empty: no secret.
PIP_CERT_FILE  ?= $(or $(PIP_CERT),$(wildcard /etc/ssl/certs/ca-certificates.crt))
ifneq ($(strip $(PIP_CERT_FILE)),)
PIP_SECRET_ARG := --secret id=pip_cert,src=$(PIP_CERT_FILE)
endif
# The commit the images are built from: label + ENV GIT_COMMIT, which training logs to MLflow.
GIT_COMMIT     ?= $(eval GIT_COMMIT := $(shell git rev-parse HEAD 2>/dev/null || echo unknown))$(GIT_COMMIT)
# Extra `docker build` arguments, e.g. DOCKER_BUILD_ARGS="--no-cache" or "--progress=plain".
DOCKER_BUILD_ARGS ?=

IMAGE_BUILD = DOCKER_BUILDKIT=1 $(DOCKER) build --network host \
	--build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg GIT_COMMIT=$(GIT_COMMIT) \
	--build-arg VERSION=$(IMAGE_TAG) \
	$(PIP_SECRET_ARG) $(DOCKER_BUILD_ARGS)

.PHONY: images image-training image-server base-image docker-engine

images: image-training image-server ## Build both images (BASE_IMAGE, REGISTRY, IMAGE_TAG)

image-training: ## Build the training job image TRAINING_IMAGE (Dockerfile target training-job)
	$(IMAGE_BUILD) --target training-job -t $(TRAINING_IMAGE) .

image-server: ## Build the model server image SERVER_IMAGE (Dockerfile target model-server)
	$(IMAGE_BUILD) --target model-server -t $(SERVER_IMAGE) .

base-image: ## Build the offline base image BASE_IMAGE_LOCAL (debootstrap bookworm + python3)
	DOCKER=$(DOCKER) scripts/build-base-image.sh $(BASE_IMAGE_LOCAL)

docker-engine: ## Start a local dockerd unless one is running (no systemd needed)
	DOCKER=$(DOCKER) scripts/start-dockerd.sh
