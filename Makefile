# rakuten-serving: train, publish and serve the Rakuten product classifier.
# `make help` lists the targets. Fragments in mk/ add the image, cluster and load-test targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3.11
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
# pip's output while installing the venv (the terminal gets one line per stage)
INSTALL_LOG ?= build/venv-install.log
DATA_DIR    ?= data/sample
MODEL_URI   ?= model-store/rakuten-classifier
SAMPLE_ROWS ?= 2700
HTTP_PORT   ?= 8080
# Demo training: small enough for a few minutes on 2 CPU cores.
TRAIN_ARGS  ?= --image-size 64 --epochs 12 --batch-size 32
PYTEST_ARGS ?=
# upload-data: a local dataset in the raw layout -> DATA_URI (s3://bucket/prefix);
# UPLOAD_ARGS: extra arguments, e.g. --create-bucket (python -m training_job.upload_data --help)
UPLOAD_SRC  ?= $(DATA_DIR)
DATA_URI    ?= s3://rakuten-datasets/rakuten
UPLOAD_ARGS ?=
# batch-predict: the test split of DATA_DIR -> PREDICTIONS (a path or s3://bucket/key.csv)
PREDICTIONS ?= results/predictions.csv
TOP_K       ?= 1
MLFLOW_PORT ?= 5000
# promote: extra arguments, e.g. PROMOTE_ARGS="--force" or "--to 3" (python -m training_job.promote --help)
PROMOTE_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

# Debian packages the test suite drives for real (Prometheus server, Docker engine, debootstrap
# for an offline base image, shellcheck); helm and kubectl come from npm (scripts/install-tools.sh).
SYSTEM_PACKAGES ?= prometheus docker.io debootstrap shellcheck unzip

.PHONY: help venv system-deps sample-data train serve demo test test-fast lint clean upload-data batch-predict mlflow-ui \
        promote lifecycle-demo docs

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_.-]+:.*?## ' $(MAKEFILE_LIST) | sort -u | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements/*.in requirements/constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is needed (set PYTHON=..., Debian: apt-get install python3.11-venv)"; exit 1; }
	@# One line per stage; pip's own output goes to $(INSTALL_LOG), shown (its end, all of it under CI) on failure.
	@mkdir -p $(dir $(INSTALL_LOG)); : > $(INSTALL_LOG); \
	stage() { echo "==> $$1"; shift; "$$@" >> $(INSTALL_LOG) 2>&1 && return 0; \
	  echo "FAILED: $$* (full log: $(INSTALL_LOG))" >&2; \
	  if [ -n "$$CI" ]; then cat $(INSTALL_LOG) >&2; else tail -n 25 $(INSTALL_LOG) >&2; fi; exit 1; }; \
	stage "Creating $(VENV) with $(PYTHON)" $(PYTHON) -m venv $(VENV); \
	stage "Upgrading pip" $(PY) -m pip install --upgrade pip; \
	stage "Installing the pinned dependencies (requirements/dev.in; a few minutes the first time, log: $(INSTALL_LOG))" \
	  $(PY) -m pip install -r requirements/dev.in -c requirements/constraints.txt; \
	stage "Installing this project (editable)" $(PY) -m pip install --no-deps -e .
	@touch $@

venv: $(STAMP) ## Create .venv with the pinned dependencies

system-deps: ## Install the Debian packages the full test suite uses (root, apt-get)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES)

# A DATA_DIR in S3 (s3://bucket/prefix) is trained from as it is: no sample is generated.
sample-data: $(STAMP) ## Generate the sample dataset (real Rakuten layout) in DATA_DIR (nothing for an s3:// DATA_DIR)
	$(if $(filter s3://%,$(DATA_DIR)),@echo "DATA_DIR=$(DATA_DIR) is in S3: no sample generated",@test -f $(DATA_DIR)/X_train_update.csv || $(PY) -m training_job.sample_data --out $(DATA_DIR) --rows $(SAMPLE_ROWS))

train: sample-data ## Train on DATA_DIR (a folder or s3://bucket/prefix) and publish a new version to MODEL_URI
	$(PY) -m training_job --data-dir $(DATA_DIR) --model-uri $(MODEL_URI) $(TRAIN_ARGS)

serve: $(STAMP) ## Serve MODEL_URI's champion (else its newest version) on 127.0.0.1:HTTP_PORT (Ctrl-C stops)
	$(PY) -m model_server --model_uri $(MODEL_URI) --http_port $(HTTP_PORT)

demo: train ## Set up, generate data, train, publish, serve, answer one V2 call, stop
	$(PY) scripts/demo.py --model-uri $(MODEL_URI) --data-dir $(DATA_DIR) --http-port $(HTTP_PORT)

promote: $(STAMP) ## Judge the registry's challenger against the champion on DATA_DIR; promote if not worse (exit 3: refused)
	$(PY) -m training_job.promote --data-dir $(DATA_DIR) $(PROMOTE_ARGS)

lifecycle-demo: sample-data ## Train, promote, train a worse model (refused by the gate), serve the champion
	$(PY) scripts/lifecycle_demo.py --data-dir $(DATA_DIR) --model-uri $(MODEL_URI) --train-args "$(TRAIN_ARGS)" \
	  --http-port $(HTTP_PORT)

upload-data: $(STAMP) ## Upload the dataset in UPLOAD_SRC (raw layout) to DATA_URI=s3://bucket/prefix, resumable (UPLOAD_ARGS=--create-bucket)
	$(PY) -m training_job.upload_data $(UPLOAD_ARGS) $(UPLOAD_SRC) $(DATA_URI)

batch-predict: $(STAMP) ## Classify DATA_DIR's test split with MODEL_URI into PREDICTIONS (CSV; TOP_K codes each)
	$(PY) -m training_job.batch_predict --model-uri $(MODEL_URI) --data-dir $(DATA_DIR) --output $(PREDICTIONS) --top-k $(TOP_K)

mlflow-ui: $(STAMP) ## Open MLflow's UI on the local runs (mlflow.db here) at http://127.0.0.1:MLFLOW_PORT
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

test: $(STAMP) ## Run the whole test suite and the static checks (installs what it needs)
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## The fast tier: in-process tests only (no S3 server, training, server, helm, Docker); a minute or two
	RAKUTEN_TEST_TIER=fast $(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

lint: $(STAMP) ## Static checks: ruff (lint + import order) and mypy (pyproject.toml says which rules)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

docs: $(STAMP) ## Regenerate docs/reference/ (options, metrics, chart values) and the chart README's tables from the code
	$(PY) scripts/gen_docs.py
	$(PY) scripts/chart-params.py

clean: ## Remove generated data, models, MLflow runs and results (keeps .venv)
	rm -rf data model-store mlflow.db mlruns.db mlruns mlartifacts results build

-include mk/*.mk
