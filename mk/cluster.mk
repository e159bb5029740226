# Kubernetes on kind: cluster, add-ons, images, chart, training, calls, load test, e2e.
# Step by step in docs/kubernetes.md; `make e2e` runs the whole chain and the cluster tests (tests/e2e).
# Every kubectl/helm call names the kind context explicitly, so no other cluster is touched.

include k8s/versions.env

CLUSTER_NAME  ?= rakuten
KIND          ?= kind
KIND_CONFIG   ?= kind-config.yaml
# Empty: the node image pinned (by digest) in kind-config.yaml.
KIND_NODE_IMAGE ?=
# helm/kubectl from scripts/install-tools.sh (.tools/bin) when present, else from PATH.
HELM          ?= $(if $(wildcard $(CURDIR)/.tools/bin/helm),$(CURDIR)/.tools/bin/helm,helm)
KUBECTL       ?= $(if $(wildcard $(CURDIR)/.tools/bin/kubectl),$(CURDIR)/.tools/bin/kubectl,kubectl)
KUBE_CONTEXT  ?= kind-$(CLUSTER_NAME)
KUBECTL_CTX    = $(KUBECTL) --context $(KUBE_CONTEXT)
HELM_CTX       = $(HELM) --kube-context $(KUBE_CONTEXT)

NAMESPACE     ?= rakuten
RELEASE       ?= rakuten-serving
CHART         ?= charts/rakuten-serving
KIND_VALUES   ?= $(CHART)/ci/kind-values.yaml
# The images `make kind-load` loaded (mk/images.mk: REGISTRY, IMAGE_TAG), so that the chart
# runs exactly those; set DEPLOY_IMAGE_ARGS= to keep the chart's own image settings.
DEPLOY_IMAGE_ARGS ?= $(if $(IMAGE_TAG),--set-string training.image.registry=$(REGISTRY) \
  --set-string training.image.tag=$(IMAGE_TAG) --set-string mlflow.image.registry=$(REGISTRY) \
  --set-string mlflow.image.tag=$(IMAGE_TAG) --set-string predictor.image.registry=$(REGISTRY) \
  --set-string predictor.image.tag=$(IMAGE_TAG))
# Your chart values, kept across deploys: `make deploy` passes this file (when it exists) after
# KIND_VALUES, so every deploy applies the same settings (training.data.uri, imageSize...). Edit
# it, not DEPLOY_ARGS, for anything that must last; it is not in git (.gitignore).
DEPLOY_VALUES ?= values-local.yaml
# One-off `helm upgrade` arguments for `make deploy`, e.g. DEPLOY_ARGS="--set training.job.onUpgrade=true"
DEPLOY_ARGS   ?=
MONITORING_NAMESPACE ?= monitoring
MONITORING_RELEASE   ?= kube-prometheus-stack
MONITORING_VALUES    ?= charts/kube-prometheus-stack-values.yaml
KSERVE_NAMESPACE     ?= kserve
# KServe <= 0.16 published the controller chart as `kserve`; 0.17+ as `kserve-resources`.
KSERVE_CHART_REPO    ?= oci://ghcr.io/kserve/charts
KSERVE_CHART         ?= kserve-resources
CERT_MANAGER_MANIFEST ?= https://github.com/cert-manager/cert-manager/releases/download/$(CERT_MANAGER_VERSION)/cert-manager.yaml
HELM_TIMEOUT    ?= 10m
ROLLOUT_TIMEOUT ?= 300s

# Host ports of kind-config.yaml (NodePorts of the chart's kind scenario).
MODEL_URL     ?= http://127.0.0.1:30080
GRAFANA_URL   ?= http://127.0.0.1:30300
MINIO_URL     ?= http://127.0.0.1:30901
MLFLOW_URL    ?= http://127.0.0.1:30500
CALL_DESIGNATION ?= Piscine tubulaire ronde 300 x 76 cm avec pompe de filtration
CALL_SAMPLE_DIR  ?= build/call-model-sample

# Optional add-ons that `make cluster-addons` installs *before* KServe when set to 1 (KServe
# watches KEDA ScaledObjects and Knative Services only if their CRDs exist when it starts).
KEDA          ?= 0
KNATIVE       ?= 0
KNATIVE_SERVING_URL ?= https://github.com/knative/serving/releases/download/$(KNATIVE_VERSION)
KNATIVE_KOURIER_URL ?= https://github.com/knative-extensions/net-kourier/releases/download/$(KNATIVE_VERSION)

# make e2e: cluster-up, then the cluster tests (tests/e2e, pytest marker `kind`), diagnostics on
# failure, cluster deleted afterwards unless it existed before or KEEP_CLUSTER=1.
KEEP_CLUSTER  ?= 0
SKIP_BUILD    ?= 0
E2E_DIAG_DIR  ?= build/e2e-diagnostics
# E2E_MODE=serverless: the same chain in KServe's Knative mode: Knative Serving + Kourier
# installed with the add-ons (KNATIVE=1), the chart deployed with ci/knative-values.yaml over the
# kind values, and only the cluster tests that apply to it (not the NodePort, HPA and Locust
# ones, which address the Standard-mode Deployment). Sub-makes inherit E2E_MODE.
E2E_MODE      ?= standard
ifeq ($(E2E_MODE),serverless)
KNATIVE        = 1
MODE_VALUES   ?= $(CHART)/ci/knative-values.yaml
E2E_PYTEST_ARGS ?= -k "not node_port and not hpa and not short_load and not test_lifecycle_kind"
else ifneq ($(E2E_MODE),standard)
$(error E2E_MODE must be standard or serverless, not '$(E2E_MODE)')
endif
# Chart values of the deployment mode, between KIND_VALUES and DEPLOY_VALUES.
MODE_VALUES   ?=
E2E_PYTEST_ARGS ?=
TRAIN_TIMEOUT ?= 1800
# What the cluster tests need to address the same cluster as these targets.
E2E_ENV = E2E_MODE='$(E2E_MODE)' CLUSTER_NAME='$(CLUSTER_NAME)' KUBE_CONTEXT='$(KUBE_CONTEXT)' NAMESPACE='$(NAMESPACE)' \
          RELEASE='$(RELEASE)' MONITORING_NAMESPACE='$(MONITORING_NAMESPACE)' MODEL_URL='$(MODEL_URL)' \
          GRAFANA_URL='$(GRAFANA_URL)' KUBECTL='$(KUBECTL)'

# make cluster-upload-data: a local dataset in the raw Rakuten layout -> the cluster's MinIO.
DATASET_SRC   ?=
DATASET_URI   ?= s3://rakuten-datasets/rakuten
MINIO_LOCAL_PORT ?= 19000
# make fetch-predictions: the CSV of a batch run in the cluster's MinIO -> PREDICTIONS (Makefile);
# PREDICTIONS_URI empty: the newest CSV under PREDICTIONS_PREFIX (`make batch-job` prints its own).
PREDICTIONS_URI    ?=
PREDICTIONS_PREFIX ?= s3://rakuten-datasets/predictions/
BATCH_TIMEOUT ?= 3600

# $(call minio_as_training,<what it does>,<command>): <command> with the training user's S3 keys
# (Secret labelled rakuten-serving/s3-user=training) through a port-forward to the release's MinIO.
define minio_as_training
@svc="$$($(KUBECTL_CTX) -n $(NAMESPACE) get svc -l app.kubernetes.io/instance=$(RELEASE),app.kubernetes.io/component=minio \
  -o jsonpath='{range .items[?(@.spec.ports[0].name=="api")]}{.metadata.name}{end}')"; \
secret="$$($(KUBECTL_CTX) -n $(NAMESPACE) get secret -o name -l app.kubernetes.io/instance=$(RELEASE),rakuten-serving/s3-user=training)"; \
test -n "$$svc" -a -n "$$secret" || { echo "no MinIO Service or training credentials of release $(RELEASE) in $(NAMESPACE)" >&2; exit 1; }; \
key="$$($(KUBECTL_CTX) -n $(NAMESPACE) get "$$secret" -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | base64 -d)"; \
password="$$($(KUBECTL_CTX) -n $(NAMESPACE) get "$$secret" -o jsonpath='{.data.AWS_SECRET_ACCESS_KEY}' | base64 -d)"; \
$(KUBECTL_CTX) -n $(NAMESPACE) port-forward --address 127.0.0.1 "svc/$$svc" $(MINIO_LOCAL_PORT):9000 >/dev/null & pf=$$!; \
trap 'kill $$pf 2>/dev/null' EXIT; sleep 3; \
echo "$(1) through 127.0.0.1:$(MINIO_LOCAL_PORT) (svc/$$svc) as the training user"; \
AWS_ENDPOINT_URL=http://127.0.0.1:$(MINIO_LOCAL_PORT) AWS_ACCESS_KEY_ID="$$key" AWS_SECRET_ACCESS_KEY="$$password" \
  AWS_DEFAULT_REGION=us-east-1 $(2)
endef

# fetch-predictions: argv = URI (empty: the newest .csv under PREFIX), PREFIX, local file.
define FETCH_PREDICTIONS_PY
import sys
from pathlib import Path
import boto3
uri, prefix, out = sys.argv[1:]
s3 = boto3.client("s3")
if not uri:
    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
    found = [o for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".csv")]
    if not found:
        sys.exit(f"no CSV under {prefix}: run make batch-job first")
    uri = f"s3://{bucket}/" + max(found, key=lambda o: o["LastModified"])["Key"]
bucket, _, key = uri.removeprefix("s3://").partition("/")
Path(out).parent.mkdir(parents=True, exist_ok=True)
s3.download_file(bucket, key, out)
print(f"{uri} -> {out} ({sum(1 for _ in open(out)) - 1} products)")
endef
export FETCH_PREDICTIONS_PY

.PHONY: cluster-create cluster-delete cluster-addons addon-namespaces addon-cert-manager \
        addon-metrics-server addon-monitoring addon-kserve addon-keda addon-knative kind-load deploy \
        cluster-up train-job batch-job fetch-predictions call-model loadtest-cluster grafana cluster-diagnostics \
        cluster-upload-data e2e e2e-test

cluster-create: ## Create the kind cluster CLUSTER_NAME (1 control plane + 2 workers); no-op if it exists
	@command -v $(KIND) >/dev/null 2>&1 || { echo "kind not found (KIND=$(KIND)): see docs/kubernetes.md, Prerequisites" >&2; exit 1; }
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(CLUSTER_NAME)'; then \
	  echo "kind cluster '$(CLUSTER_NAME)' already exists"; \
	else \
	  echo "creating kind cluster '$(CLUSTER_NAME)' from $(KIND_CONFIG) (kind $(KIND_VERSION), Kubernetes $(KUBERNETES_VERSION))"; \
	  $(KIND) create cluster --name '$(CLUSTER_NAME)' --config '$(KIND_CONFIG)' \
	    $(if $(KIND_NODE_IMAGE),--image '$(KIND_NODE_IMAGE)') --wait 180s; \
	fi
	$(KUBECTL_CTX) get nodes -o wide

cluster-delete: ## Delete the kind cluster CLUSTER_NAME (and everything in it)
	$(KIND) delete cluster --name '$(CLUSTER_NAME)'

cluster-addons: ## Install the add-ons: namespaces, cert-manager, metrics-server, monitoring, (KEDA=1, KNATIVE=1), KServe
	@$(MAKE) --no-print-directory addon-namespaces
	@$(MAKE) --no-print-directory addon-cert-manager
	@$(MAKE) --no-print-directory addon-metrics-server
	@$(MAKE) --no-print-directory addon-monitoring
	$(if $(filter 1,$(KEDA)),@$(MAKE) --no-print-directory addon-keda)
	$(if $(filter 1,$(KNATIVE)),@$(MAKE) --no-print-directory addon-knative)
	@$(MAKE) --no-print-directory addon-kserve
	@echo "add-ons ready: cert-manager $(CERT_MANAGER_VERSION), metrics-server chart $(METRICS_SERVER_CHART_VERSION), kube-prometheus-stack $(KUBE_PROMETHEUS_STACK_VERSION), KServe $(KSERVE_VERSION) (Standard mode)$(if $(filter 1,$(KEDA)), + KEDA)$(if $(filter 1,$(KNATIVE)), + Knative)"

addon-namespaces: ## Create the namespaces rakuten, monitoring and kserve (k8s/namespaces.yaml)
	$(KUBECTL_CTX) apply -f k8s/namespaces.yaml

addon-cert-manager: ## Install cert-manager (pinned release manifest) and wait for its webhook
	$(KUBECTL_CTX) apply -f $(CERT_MANAGER_MANIFEST)
	@for d in cert-manager cert-manager-cainjector cert-manager-webhook; do \
	  $(KUBECTL_CTX) -n cert-manager rollout status deployment/$$d --timeout=$(ROLLOUT_TIMEOUT) || exit 1; \
	done

addon-metrics-server: ## Install metrics-server for kind (--kubelet-insecure-tls) so that the HPA gets CPU metrics
	$(HELM_CTX) upgrade --install metrics-server metrics-server \
	  --repo https://kubernetes-sigs.github.io/metrics-server/ --version $(METRICS_SERVER_CHART_VERSION) \
	  --namespace kube-system -f k8s/metrics-server-values.yaml --wait --timeout $(HELM_TIMEOUT)
	$(KUBECTL_CTX) -n kube-system rollout status deployment/metrics-server --timeout=$(ROLLOUT_TIMEOUT)

addon-monitoring: ## Install kube-prometheus-stack (Prometheus operator, Prometheus, Grafana) into MONITORING_NAMESPACE
	@test -f '$(MONITORING_VALUES)' || { echo "missing $(MONITORING_VALUES)" >&2; exit 1; }
	$(HELM_CTX) upgrade --install $(MONITORING_RELEASE) kube-prometheus-stack \
	  --repo https://prometheus-community.github.io/helm-charts --version $(KUBE_PROMETHEUS_STACK_VERSION) \
	  --namespace $(MONITORING_NAMESPACE) --create-namespace -f '$(MONITORING_VALUES)' \
	  --wait --timeout 15m

addon-kserve: ## Install the KServe CRDs and controller (OCI Helm charts, Standard mode, k8s/kserve-values.yaml)
	$(HELM_CTX) upgrade --install kserve-crd $(KSERVE_CHART_REPO)/kserve-crd --version $(KSERVE_VERSION) \
	  --namespace $(KSERVE_NAMESPACE) --create-namespace --wait --timeout $(HELM_TIMEOUT)
	@# The first install can race cert-manager's webhook CA injection: retry a few times.
	@for attempt in 1 2 3; do \
	  echo "$(HELM) upgrade --install kserve $(KSERVE_CHART_REPO)/$(KSERVE_CHART) --version $(KSERVE_VERSION) (attempt $$attempt)"; \
	  $(HELM_CTX) upgrade --install kserve $(KSERVE_CHART_REPO)/$(KSERVE_CHART) --version $(KSERVE_VERSION) \
	    --namespace $(KSERVE_NAMESPACE) -f k8s/kserve-values.yaml --wait --timeout $(HELM_TIMEOUT) && exit 0; \
	  sleep 20; \
	done; echo "KServe install failed 3 times" >&2; exit 1
	$(KUBECTL_CTX) -n $(KSERVE_NAMESPACE) rollout status deployment/kserve-controller-manager --timeout=$(ROLLOUT_TIMEOUT)

addon-keda: ## Optional: install KEDA (autoscaling on Prometheus queries); restarts a running KServe so that it watches ScaledObjects
	$(HELM_CTX) upgrade --install keda keda --repo https://kedacore.github.io/charts --version $(KEDA_CHART_VERSION) \
	  --namespace keda --create-namespace -f k8s/keda-values.yaml --wait --timeout $(HELM_TIMEOUT)
	@$(MAKE) --no-print-directory kserve-restart

addon-knative: ## Optional: Knative Serving + Kourier (KNATIVE_VERSION) with the feature flags the chart's Knative mode needs
	$(KUBECTL_CTX) apply -f $(KNATIVE_SERVING_URL)/serving-crds.yaml
	$(KUBECTL_CTX) wait --for=condition=Established crd/services.serving.knative.dev --timeout=60s
	$(KUBECTL_CTX) apply -f $(KNATIVE_SERVING_URL)/serving-core.yaml
	$(KUBECTL_CTX) apply -f $(KNATIVE_KOURIER_URL)/kourier.yaml
	@for d in activator autoscaler controller webhook; do \
	  $(KUBECTL_CTX) -n knative-serving rollout status deployment/$$d --timeout=$(ROLLOUT_TIMEOUT) || exit 1; \
	done
	$(KUBECTL_CTX) -n knative-serving patch configmap/config-network --type merge \
	  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
	$(KUBECTL_CTX) -n knative-serving patch configmap/config-domain --type merge -p '{"data":{"example.com":""}}'
	@# Pod fields Knative gates behind flags that the chart's predictor uses (securityContext...).
	$(KUBECTL_CTX) -n knative-serving patch configmap/config-features --type merge --patch-file k8s/knative-features-patch.yaml
	@$(MAKE) --no-print-directory kserve-restart

kserve-restart: ## Restart a running KServe controller (it discovers KEDA/Knative CRDs only when it starts)
	@if $(KUBECTL_CTX) -n $(KSERVE_NAMESPACE) get deployment/kserve-controller-manager >/dev/null 2>&1; then \
	  echo "restarting KServe so that it watches the new CRDs"; \
	  $(KUBECTL_CTX) -n $(KSERVE_NAMESPACE) rollout restart deployment/kserve-controller-manager && \
	  $(KUBECTL_CTX) -n $(KSERVE_NAMESPACE) rollout status deployment/kserve-controller-manager --timeout=$(ROLLOUT_TIMEOUT); \
	fi

kind-load: ## Load TRAINING_IMAGE and SERVER_IMAGE into the kind nodes (build them first: make images)
	@test -n '$(TRAINING_IMAGE)' -a -n '$(SERVER_IMAGE)' || { echo "TRAINING_IMAGE/SERVER_IMAGE are not set (mk/images.mk)" >&2; exit 1; }
	@for image in '$(TRAINING_IMAGE)' '$(SERVER_IMAGE)'; do \
	  docker image inspect "$$image" >/dev/null 2>&1 || { echo "image $$image not found locally: run make images" >&2; exit 1; }; \
	done
	$(KIND) load docker-image --name '$(CLUSTER_NAME)' '$(TRAINING_IMAGE)' '$(SERVER_IMAGE)'

deploy: ## helm upgrade --install the chart into NAMESPACE: KIND_VALUES, then your DEPLOY_VALUES file (kept across deploys); trains only at install
	@test -f '$(CHART)/Chart.yaml' || { echo "no chart at $(CHART)" >&2; exit 1; }
	@test -f '$(KIND_VALUES)' || { echo "no kind scenario values at $(KIND_VALUES)" >&2; exit 1; }
	@echo "values: $(strip $(KIND_VALUES) $(MODE_VALUES)) $(if $(wildcard $(DEPLOY_VALUES)),+ $(DEPLOY_VALUES),(no $(DEPLOY_VALUES) yet: put your settings there to keep them))"
	$(HELM_CTX) upgrade --install $(RELEASE) '$(CHART)' --namespace $(NAMESPACE) --create-namespace \
	  -f '$(KIND_VALUES)' $(foreach f,$(MODE_VALUES),-f '$(f)') $(if $(wildcard $(DEPLOY_VALUES)),-f '$(DEPLOY_VALUES)') \
	  $(DEPLOY_IMAGE_ARGS) $(DEPLOY_ARGS) --timeout $(HELM_TIMEOUT)
	@echo "deployed. Retrain: make train-job | batch predictions: make batch-job | model: make call-model ($(MODEL_URL)) | MLflow $(MLFLOW_URL) | MinIO $(MINIO_URL) | make grafana"

cluster-up: ## Everything up to a deployed chart: cluster-create, images (unless SKIP_BUILD=1), kind-load, cluster-addons, deploy
	@$(MAKE) --no-print-directory cluster-create
	$(if $(filter 1,$(SKIP_BUILD)),@echo "SKIP_BUILD=1: using the images already built",@$(MAKE) --no-print-directory images)
	@$(MAKE) --no-print-directory kind-load
	@$(MAKE) --no-print-directory cluster-addons
	@$(MAKE) --no-print-directory deploy

train-job: ## Retrain now: a Job from the chart's training CronJob (suspended unless scheduled), wait for it, show its logs
	@cronjob="$$($(KUBECTL_CTX) -n $(NAMESPACE) get cronjobs -o name \
	  -l app.kubernetes.io/instance=$(RELEASE),app.kubernetes.io/component=training | head -n 1)"; \
	test -n "$$cronjob" || { echo "no training CronJob of release $(RELEASE) in $(NAMESPACE): make deploy first" >&2; exit 1; }; \
	job="train-manual-$$(date +%Y%m%d-%H%M%S)"; \
	echo "creating job/$$job from $$cronjob"; \
	$(KUBECTL_CTX) -n $(NAMESPACE) create job "$$job" --from="$$cronjob" || exit 1; \
	$(KUBECTL_CTX) -n $(NAMESPACE) wait --for=create pod -l job-name="$$job" --timeout=120s >/dev/null; \
	$(KUBECTL_CTX) -n $(NAMESPACE) logs -f "job/$$job" -c train --pod-running-timeout=10m || true; \
	deadline=$$((SECONDS + $(TRAIN_TIMEOUT))); \
	while :; do \
	  state="$$($(KUBECTL_CTX) -n $(NAMESPACE) get job "$$job" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')"; \
	  case "$$state" in \
	    *Complete*) echo "job/$$job complete: a new version is published and judged; a new champion is rolled out by the Job itself. What was decided: $(KUBECTL) --context $(KUBE_CONTEXT) -n $(NAMESPACE) get events --field-selector involvedObject.kind=InferenceService"; exit 0 ;; \
	    *Failed*) echo "job/$$job failed:" >&2; $(KUBECTL_CTX) -n $(NAMESPACE) logs "job/$$job" --all-containers --tail=40 >&2; exit 1 ;; \
	  esac; \
	  [ $$SECONDS -lt $$deadline ] || { echo "job/$$job not finished after $(TRAIN_TIMEOUT) s" >&2; exit 1; }; \
	  sleep 10; \
	done

call-model: $(STAMP) ## Classify one product through the kind NodePort (MODEL_URL) with the V2 client
	@image="$$(find '$(DATA_DIR)' -name '*.jpg' -print -quit 2>/dev/null)"; \
	if [ -z "$$image" ]; then \
	  image="$$(find '$(CALL_SAMPLE_DIR)' -name '*.jpg' -print -quit 2>/dev/null)"; \
	fi; \
	if [ -z "$$image" ]; then \
	  echo "no sample image yet: generating a few into $(CALL_SAMPLE_DIR)"; \
	  $(PY) -m training_job.sample_data --out '$(CALL_SAMPLE_DIR)' --rows 1 --test-rows 0 >/dev/null || exit 1; \
	  image="$$(find '$(CALL_SAMPLE_DIR)' -name '*.jpg' -print -quit)"; \
	fi; \
	echo "POST $(MODEL_URL)/v2/models/rakuten-classifier/infer  (image $$image)"; \
	$(PY) -m model_server.client --url '$(MODEL_URL)' --designation '$(CALL_DESIGNATION)' --image "$$image"

loadtest-cluster: ## Locust load test against the model on the kind NodePort (make loadtest HOST=MODEL_URL)
	$(MAKE) --no-print-directory loadtest HOST=$(MODEL_URL)

grafana: ## Print the Grafana URL and admin credentials of the kind cluster
	@secret="$$($(KUBECTL_CTX) -n $(MONITORING_NAMESPACE) get secret -l app.kubernetes.io/name=grafana -o name 2>/dev/null | head -n 1)"; \
	test -n "$$secret" || { echo "no Grafana secret in namespace $(MONITORING_NAMESPACE): run make addon-monitoring" >&2; exit 1; }; \
	user="$$($(KUBECTL_CTX) -n $(MONITORING_NAMESPACE) get "$$secret" -o jsonpath='{.data.admin-user}' | base64 -d)"; \
	password="$$($(KUBECTL_CTX) -n $(MONITORING_NAMESPACE) get "$$secret" -o jsonpath='{.data.admin-password}' | base64 -d)"; \
	echo "Grafana:  $(GRAFANA_URL)   user: $$user   password: $$password"; \
	echo "Dashboard: \"Rakuten product classifier (KServe)\". Prometheus: $(KUBECTL) --context $(KUBE_CONTEXT) -n $(MONITORING_NAMESPACE) port-forward --address 127.0.0.1 svc/prometheus-operated 9090"

cluster-upload-data: $(STAMP) ## Upload DATASET_SRC (raw Rakuten layout) to DATASET_URI in the kind cluster's MinIO (port-forward, the training user's key)
	@test -n '$(DATASET_SRC)' || { echo "set DATASET_SRC=/path/to/the/dataset (X_train_update.csv, Y_train_CVw08PX.csv, images/...)" >&2; exit 1; }
	$(call minio_as_training,uploading $(DATASET_SRC) to $(DATASET_URI),$(PY) -m training_job.upload_data '$(DATASET_SRC)' '$(DATASET_URI)')

batch-job: ## Batch predictions in the cluster with the current champion, no retraining: a Job from the chart's batch-predict CronJob, wait, where its CSV is
	@cronjob="$$($(KUBECTL_CTX) -n $(NAMESPACE) get cronjobs -o name \
	  -l app.kubernetes.io/instance=$(RELEASE),app.kubernetes.io/component=batch-predict | head -n 1)"; \
	test -n "$$cronjob" || { echo "no batch-predict CronJob of release $(RELEASE) in $(NAMESPACE): the chart renders it once the test data is in S3 (training.data.uri or batchPredict.dataUri in $(DEPLOY_VALUES)), then make deploy" >&2; exit 1; }; \
	job="batch-manual-$$(date +%Y%m%d-%H%M%S)"; \
	echo "creating job/$$job from $$cronjob"; \
	$(KUBECTL_CTX) -n $(NAMESPACE) create job "$$job" --from="$$cronjob" || exit 1; \
	$(KUBECTL_CTX) -n $(NAMESPACE) wait --for=create pod -l job-name="$$job" --timeout=120s >/dev/null; \
	$(KUBECTL_CTX) -n $(NAMESPACE) logs -f "job/$$job" -c batch-predict --pod-running-timeout=10m || true; \
	deadline=$$((SECONDS + $(BATCH_TIMEOUT))); \
	while :; do \
	  state="$$($(KUBECTL_CTX) -n $(NAMESPACE) get job "$$job" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')"; \
	  case "$$state" in \
	    *Complete*) output="$$($(KUBECTL_CTX) -n $(NAMESPACE) get job "$$job" -o jsonpath='{.spec.template.spec.containers[0].args}' \
	                  | tr ',' '\n' | sed -n 's/.*--output=\([^"]*\).*/\1/p' | sed "s|\$$(JOB_NAME)|$$job|")"; \
	                echo "job/$$job complete: $$output. Fetch it: make fetch-predictions PREDICTIONS_URI=$$output"; exit 0 ;; \
	    *Failed*) echo "job/$$job failed:" >&2; $(KUBECTL_CTX) -n $(NAMESPACE) logs "job/$$job" --all-containers --tail=40 >&2; exit 1 ;; \
	  esac; \
	  [ $$SECONDS -lt $$deadline ] || { echo "job/$$job not finished after $(BATCH_TIMEOUT) s" >&2; exit 1; }; \
	  sleep 10; \
	done

fetch-predictions: $(STAMP) ## Download a batch run's CSV from the cluster's MinIO to PREDICTIONS (PREDICTIONS_URI, else the newest)
	$(call minio_as_training,fetching $(or $(PREDICTIONS_URI),the newest CSV under $(PREDICTIONS_PREFIX)),$(PY) -c "$$FETCH_PREDICTIONS_PY" '$(PREDICTIONS_URI)' '$(PREDICTIONS_PREFIX)' '$(PREDICTIONS)')

cluster-diagnostics: ## Dump what a failed run needs (get/describe/logs/events, helm, kind logs) into E2E_DIAG_DIR
	@$(E2E_ENV) KIND='$(KIND)' HELM='$(HELM)' scripts/cluster-diagnostics.sh '$(E2E_DIAG_DIR)'

e2e: $(STAMP) ## Create the kind cluster, deploy everything, run the cluster tests (make e2e-test); E2E_MODE=serverless: Knative mode; KEEP_CLUSTER=1 keeps the cluster
	@existed=0; $(KIND) get clusters 2>/dev/null | grep -qx '$(CLUSTER_NAME)' && existed=1; \
	status=0; started=$$SECONDS; \
	$(MAKE) --no-print-directory cluster-up && $(MAKE) --no-print-directory e2e-test || status=$$?; \
	if [ $$status -ne 0 ]; then \
	  $(MAKE) --no-print-directory cluster-diagnostics || true; \
	  echo "E2E FAILED (exit $$status); diagnostics in $(E2E_DIAG_DIR)" >&2; \
	else echo "E2E PASSED in $$(( (SECONDS - started) / 60 )) min"; fi; \
	if [ $$existed = 1 ]; then echo "cluster '$(CLUSTER_NAME)' existed before: kept"; \
	elif [ '$(KEEP_CLUSTER)' = 1 ]; then echo "KEEP_CLUSTER=1: cluster '$(CLUSTER_NAME)' kept (make cluster-delete removes it)"; \
	else $(MAKE) --no-print-directory cluster-delete; fi; \
	exit $$status

e2e-test: $(STAMP) ## The cluster tests alone (pytest -m kind tests/e2e) against the running kind cluster
	$(E2E_ENV) $(PY) -m pytest -m kind tests/e2e -p no:cacheprovider $(E2E_PYTEST_ARGS)
