#!/usr/bin/env bash
# End-to-end test of rakuten-serving on a real kind cluster: the whole chain a user runs.
#
#   scripts/e2e.sh             # = make e2e: all the steps below, then delete the cluster
#   KEEP_CLUSTER=1 make e2e    # keep the cluster afterwards (to look around, or rerun steps)
#   scripts/e2e.sh STEP        # one step against an existing cluster: prereqs, wait-training,
#                              # wait-ready, smoke, loadtest, check-hpa, check-metrics,
#                              # train-job (= make train-job), diagnostics (= make cluster-diagnostics)
#
# Steps of `all`: prerequisites -> kind cluster -> images -> kind load -> add-ons (each rollout
# waited for, with timeouts) -> chart -> training Job complete -> InferenceService Ready ->
# V2 call answers 200 with one of the 27 prdtypecodes -> short Locust run with thresholds ->
# HPA present and fed by metrics-server -> Prometheus has the predictor's metrics -> teardown.
# A failing step stops the run with "E2E FAILED at step ...", and the cluster's state
# (kubectl get/describe/logs, events, helm releases, kind logs) lands in E2E_DIAG_DIR.
#
# Settings (environment; the make targets pass theirs): CLUSTER_NAME (rakuten), KIND, KUBECTL,
# HELM, KUBE_CONTEXT (kind-$CLUSTER_NAME), NAMESPACE (rakuten), RELEASE (rakuten-serving),
# MONITORING_NAMESPACE (monitoring), ISVC_NAME (default: the InferenceService in NAMESPACE), MODEL_URL (http://127.0.0.1:30080), PY (.venv/bin/python),
# MAKE, KEEP_CLUSTER (0), SKIP_BUILD (0: run `make images`), E2E_DIAG_DIR
# (build/e2e-diagnostics), TRAIN_TIMEOUT (1800 s), READY_TIMEOUT (900 s), E2E_LOCUST_RUN_TIME
# (45s), E2E_LOCUST_USERS (4), E2E_MAX_P95_MS (5000), E2E_MAX_FAIL_RATIO (0.01),
# E2E_POLL_SECONDS (10), E2E_HPA_TIMEOUT (240 s), E2E_METRICS_TIMEOUT (240 s), PROMETHEUS_LOCAL_PORT (19090), TRAIN_JOB (the Job or CronJob that
# `train-job` reruns; default: found in NAMESPACE), E2E_RERUN_TRAINING (1: also rerun the
# training at the end, as `make train-job` does).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

default_tool() {  # the pinned copy from scripts/install-tools.sh when present, else PATH
  if [[ -x "$REPO/.tools/bin/$1" ]]; then echo "$REPO/.tools/bin/$1"; else echo "$1"; fi
}

CLUSTER_NAME="${CLUSTER_NAME:-rakuten}"
KIND="${KIND:-kind}"
KUBECTL="${KUBECTL:-$(default_tool kubectl)}"
HELM="${HELM:-$(default_tool helm)}"
KUBE_CONTEXT="${KUBE_CONTEXT:-kind-$CLUSTER_NAME}"
NAMESPACE="${NAMESPACE:-rakuten}"
RELEASE="${RELEASE:-rakuten-serving}"
MONITORING_NAMESPACE="${MONITORING_NAMESPACE:-monitoring}"
MODEL_NAME="rakuten-classifier"   # the V2 model name in /v2/models/<name>/...
ISVC_NAME="${ISVC_NAME:-}"        # the InferenceService; empty: the one the chart created
MODEL_URL="${MODEL_URL:-http://127.0.0.1:30080}"
PY="${PY:-.venv/bin/python}"
MAKE="${MAKE:-make}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
DIAG_DIR="${E2E_DIAG_DIR:-build/e2e-diagnostics}"
TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-1800}"
READY_TIMEOUT="${READY_TIMEOUT:-900}"
E2E_LOCUST_RUN_TIME="${E2E_LOCUST_RUN_TIME:-45s}"
E2E_LOCUST_USERS="${E2E_LOCUST_USERS:-4}"
E2E_MAX_P95_MS="${E2E_MAX_P95_MS:-5000}"
E2E_MAX_FAIL_RATIO="${E2E_MAX_FAIL_RATIO:-0.01}"
PROMETHEUS_LOCAL_PORT="${PROMETHEUS_LOCAL_PORT:-19090}"
POLL_SECONDS="${E2E_POLL_SECONDS:-10}"
HPA_TIMEOUT="${E2E_HPA_TIMEOUT:-240}"
METRICS_TIMEOUT="${E2E_METRICS_TIMEOUT:-240}"
TRAIN_JOB="${TRAIN_JOB:-}"
# Host ports that kind-config.yaml maps (checked free before creating the cluster).
HOST_PORTS=(30080 30300 30901 30500)

KIND_VERSION="$(sed -n 's/^KIND_VERSION=//p' k8s/versions.env)"

STEP="start"
RUN_ALL=0
REPORTED=0
CREATED_CLUSTER=0
PORT_FORWARD_PID=""

kube() { "$KUBECTL" --context "$KUBE_CONTEXT" "$@"; }
helmk() { "$HELM" --kube-context "$KUBE_CONTEXT" "$@"; }
mk() {
  "$MAKE" --no-print-directory CLUSTER_NAME="$CLUSTER_NAME" KIND="$KIND" KUBECTL="$KUBECTL" \
    HELM="$HELM" KUBE_CONTEXT="$KUBE_CONTEXT" NAMESPACE="$NAMESPACE" RELEASE="$RELEASE" \
    MONITORING_NAMESPACE="$MONITORING_NAMESPACE" MODEL_URL="$MODEL_URL" "$@"
}
log() { echo "e2e: $*"; }
isvc() {  # name of the InferenceService: ISVC_NAME, else the (first) one in NAMESPACE
  local name="$ISVC_NAME"
  [[ -n "$name" ]] || name="$(kube -n "$NAMESPACE" get inferenceservices -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)"
  echo "${name:-$MODEL_NAME}"
}
step() { STEP="$1"; echo; echo "==> [$(date +%H:%M:%S)] $1"; }
fail() { echo "E2E FAILED at step '$STEP': $*" >&2; REPORTED=1; exit 1; }

# ---------------------------------------------------------------------------------------------
# Diagnostics and cleanup
# ---------------------------------------------------------------------------------------------
collect_diagnostics() {
  local dir="$DIAG_DIR"
  mkdir -p "$dir/logs"
  log "collecting diagnostics into $dir"
  {
    echo "failed step: $STEP"; date -u
    kube version 2>&1 || true
  } > "$dir/summary.txt"
  kube get nodes -o wide > "$dir/nodes.txt" 2>&1 || true
  kube get all,jobs,cronjobs,pvc,hpa,networkpolicies -A -o wide > "$dir/get-all.txt" 2>&1 || true
  kube get podmonitors,servicemonitors,prometheusrules -A > "$dir/get-monitoring.txt" 2>&1 || true
  kube get inferenceservices -A -o yaml > "$dir/inferenceservices.yaml" 2>&1 || true
  kube get events -A --sort-by=.lastTimestamp > "$dir/events.txt" 2>&1 || true
  kube -n "$NAMESPACE" describe pods,jobs,inferenceservices,hpa,services > "$dir/describe-$NAMESPACE.txt" 2>&1 || true
  kube -n kserve describe pods > "$dir/describe-kserve.txt" 2>&1 || true
  kube top pods -A > "$dir/top-pods.txt" 2>&1 || true
  helmk list -A > "$dir/helm-list.txt" 2>&1 || true
  helmk -n "$NAMESPACE" status "$RELEASE" > "$dir/helm-status.txt" 2>&1 || true
  local ns pod
  for ns in "$NAMESPACE" kserve "$MONITORING_NAMESPACE"; do
    for pod in $(kube -n "$ns" get pods -o name 2>/dev/null); do
      kube -n "$ns" logs "$pod" --all-containers --prefix --tail=2000 > "$dir/logs/$ns-${pod#pod/}.log" 2>&1 || true
      kube -n "$ns" logs "$pod" --all-containers --prefix --previous --tail=500 \
        > "$dir/logs/$ns-${pod#pod/}.previous.log" 2>/dev/null || rm -f "$dir/logs/$ns-${pod#pod/}.previous.log"
    done
  done
  if [[ "${E2E_KIND_LOGS:-1}" == 1 ]] && command -v "$KIND" >/dev/null 2>&1; then
    "$KIND" export logs "$dir/kind" --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  fi
  echo "--- pods in $NAMESPACE ---" >&2
  kube -n "$NAMESPACE" get pods -o wide >&2 || true
  echo "--- last events in $NAMESPACE ---" >&2
  kube -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 25 >&2 || true
}

stop_port_forward() {
  if [[ -n "$PORT_FORWARD_PID" ]]; then
    kill "$PORT_FORWARD_PID" 2>/dev/null || true
    wait "$PORT_FORWARD_PID" 2>/dev/null || true
    PORT_FORWARD_PID=""
  fi
}

on_exit() {
  local rc=$?
  trap - EXIT
  stop_port_forward
  if (( rc != 0 )); then
    (( REPORTED )) || echo "E2E FAILED at step '$STEP' (exit $rc)" >&2
    if [[ "$STEP" != prerequisites && "$STEP" != start ]]; then
      collect_diagnostics || true
      echo "diagnostics: $DIAG_DIR" >&2
    fi
  fi
  if (( RUN_ALL )); then
    if (( CREATED_CLUSTER )) && [[ "$KEEP_CLUSTER" != 1 ]]; then
      step "teardown"
      "$KIND" delete cluster --name "$CLUSTER_NAME" || true
    elif (( CREATED_CLUSTER )); then
      log "KEEP_CLUSTER=1: cluster '$CLUSTER_NAME' kept (make cluster-delete removes it)"
    fi
  fi
  exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
check_prerequisites() {
  step "prerequisites"
  local missing=0
  need() {  # need TOOL HOW-TO-GET-IT
    if ! command -v "$1" >/dev/null 2>&1; then
      echo "  missing: $1 -- $2" >&2
      missing=1
    fi
  }
  need docker "install Docker (apt-get install docker.io); scripts/start-dockerd.sh starts an engine"
  need "$KIND" "install kind $KIND_VERSION (https://kind.sigs.k8s.io), or set KIND=/path/to/kind"
  need "$KUBECTL" "run scripts/install-tools.sh (.tools/bin/kubectl), or set KUBECTL"
  need "$HELM" "run scripts/install-tools.sh (.tools/bin/helm), or set HELM"
  need "$MAKE" "install GNU make"
  if [[ ! -x "$PY" ]]; then
    echo "  missing: $PY -- run make venv first" >&2
    missing=1
  fi
  (( missing == 0 )) || fail "prerequisites missing (see above)"
  if ! timeout 20 docker info >/dev/null 2>&1; then
    fail "the Docker engine does not answer (docker info); start it (scripts/start-dockerd.sh)"
  fi
  log "docker $(docker version --format '{{.Server.Version}}' 2>/dev/null), $("$KIND" version 2>/dev/null), helm $("$HELM" version --short 2>/dev/null)"
}

create_cluster() {
  step "kind cluster '$CLUSTER_NAME'"
  if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    log "cluster '$CLUSTER_NAME' exists already: reusing it (and keeping it afterwards)"
  else
    local port busy=()
    for port in "${HOST_PORTS[@]}"; do
      if "$PY" -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then :; else busy+=("$port"); fi
    done
    (( ${#busy[@]} == 0 )) || fail "host port(s) ${busy[*]} already in use; kind-config.yaml needs them free"
    CREATED_CLUSTER=1
    mk cluster-create || fail "kind could not create the cluster"
  fi
  kube wait --for=condition=Ready nodes --all --timeout=180s || fail "nodes not Ready"
}

build_and_load_images() {
  step "images"
  if [[ "$SKIP_BUILD" == 1 ]]; then
    log "SKIP_BUILD=1: using the images already built"
  else
    mk images || fail "make images failed"
  fi
  step "kind load"
  mk kind-load || fail "loading the images into kind failed"
}

install_addons() {
  step "add-ons: namespaces";     mk addon-namespaces     || fail "namespaces"
  step "add-ons: cert-manager";   mk addon-cert-manager   || fail "cert-manager did not become ready"
  step "add-ons: metrics-server"; mk addon-metrics-server || fail "metrics-server did not become ready"
  step "add-ons: monitoring";     mk addon-monitoring     || fail "kube-prometheus-stack did not become ready"
  step "add-ons: kserve";         mk addon-kserve         || fail "KServe did not become ready"
  kube get crd inferenceservices.serving.kserve.io >/dev/null || fail "InferenceService CRD missing after KServe install"
}

install_chart() {
  step "chart"
  mk deploy || fail "helm upgrade --install of the chart failed"
  kube -n "$NAMESPACE" get inferenceservices -o name | grep -q . \
    || fail "the chart created no InferenceService in $NAMESPACE"
}

# job_state NAME -> Complete | Failed | Running | Gone (deleted by its TTL once finished)
job_state() {
  local types
  if ! types="$(kube -n "$NAMESPACE" get job "$1" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}' 2>&1)"; then
    case "$types" in *NotFound*|*"not found"*) echo Gone; return ;; esac
    types=""
  fi
  case " $types " in
    *" Complete "*) echo Complete ;;
    *" Failed "*) echo Failed ;;
    *) echo Running ;;
  esac
}

# wait_jobs TIMEOUT JOB... : every Job Complete, or fail with its logs as soon as one fails.
wait_jobs() {
  local timeout="$1"; shift
  local deadline=$((SECONDS + timeout)) job state pending
  while :; do
    pending=0
    for job in "$@"; do
      state="$(job_state "$job")"
      if [[ "$state" == Failed ]]; then
        kube -n "$NAMESPACE" logs "job/$job" --all-containers --tail=80 >&2 || true
        fail "Job $job failed (logs above)"
      fi
      [[ "$state" == Complete || "$state" == Gone ]] || pending=1
    done
    (( pending == 0 )) && return 0
    (( SECONDS < deadline )) || fail "Job(s) $* not complete after ${timeout}s"
    sleep "$POLL_SECONDS"
  done
}

wait_training() {
  step "training Job"
  local jobs=()
  mapfile -t jobs < <(kube -n "$NAMESPACE" get jobs -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  (( ${#jobs[@]} > 0 )) || fail "no Job in namespace $NAMESPACE (the chart should run the training once on install)"
  log "waiting up to ${TRAIN_TIMEOUT}s for: ${jobs[*]}"
  wait_jobs "$TRAIN_TIMEOUT" "${jobs[@]}"
  local job
  for job in "${jobs[@]}"; do
    echo "--- last log lines of job/$job ---"
    kube -n "$NAMESPACE" logs "job/$job" --all-containers --tail=15 || true
  done
}

wait_ready() {
  step "InferenceService Ready"
  local name
  name="$(isvc)"
  kube -n "$NAMESPACE" wait --for=condition=Ready "inferenceservice/$name" --timeout="${READY_TIMEOUT}s" \
    || fail "InferenceService $name not Ready after ${READY_TIMEOUT}s"
  kube -n "$NAMESPACE" get inferenceservice "$name"
  # The NodePort answers once the predictor's endpoints are in the Service: poll the V2 readiness.
  local deadline=$((SECONDS + 180))
  until curl -fsS -o /dev/null "$MODEL_URL/v2/models/$MODEL_NAME/ready"; do
    (( SECONDS < deadline )) || fail "$MODEL_URL/v2/models/$MODEL_NAME/ready does not answer 200 through the NodePort (host port 30080)"
    sleep "$POLL_SECONDS"
  done
  log "model ready at $MODEL_URL"
}

smoke_call() {
  step "V2 inference call"
  "$PY" - "$MODEL_URL" <<'EOF' || fail "the V2 call did not return a valid answer"
import io, json, sys
from PIL import Image, ImageDraw
from model_server.client import Product, infer_request, infer_url, parse_response, post
from rakuten_common.labels import PRDTYPECODES

url = sys.argv[1]
image = Image.new("RGB", (500, 500), (235, 240, 250))
ImageDraw.Draw(image).ellipse((60, 160, 440, 340), fill=(40, 120, 200))
buffer = io.BytesIO()
image.save(buffer, format="JPEG", quality=85)
product = Product("Piscine tubulaire ronde 300 x 76 cm", "<p>Pompe de filtration incluse</p>", buffer.getvalue())
status, answer = post(infer_url(url), json.dumps(infer_request([product], top_k=3)).encode(),
                      {"Content-Type": "application/json"})
print(f"HTTP {status}: {json.dumps(answer)[:400]}")
if status != 200:
    sys.exit(f"expected HTTP 200, got {status}")
top = parse_response(answer)[0]
codes = [code for code, _ in top]
if not all(code in PRDTYPECODES for code in codes):
    sys.exit(f"prdtypecode(s) {codes} not among the 27 classes")
if not all(0.0 <= p <= 1.0 for _, p in top):
    sys.exit(f"probabilities out of [0, 1]: {top}")
print(f"OK: top-3 {top}")
EOF
}

run_loadtest() {
  step "Locust load test (${E2E_LOCUST_RUN_TIME}, ${E2E_LOCUST_USERS} users, p95 <= ${E2E_MAX_P95_MS} ms, failures <= ${E2E_MAX_FAIL_RATIO})"
  LOCUST_USERS="$E2E_LOCUST_USERS" LOCUST_SPAWN_RATE="$E2E_LOCUST_USERS" LOCUST_RUN_TIME="$E2E_LOCUST_RUN_TIME" \
  LOCUST_LOAD_SHAPE=constant LOCUST_MAX_P95_MS="$E2E_MAX_P95_MS" LOCUST_MAX_FAIL_RATIO="$E2E_MAX_FAIL_RATIO" \
    mk loadtest HOST="$MODEL_URL" || fail "the load test exceeded its thresholds (or could not run)"
}

check_hpa() {
  step "HPA"
  local hpa name deadline=$((SECONDS + HPA_TIMEOUT)) current=""
  name="$(isvc)"
  hpa="$(kube -n "$NAMESPACE" get hpa -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep -m1 "^$name-predictor" || true)"
  [[ -n "$hpa" ]] || fail "no HorizontalPodAutoscaler $name-predictor in $NAMESPACE (Standard mode with autoscalerClass hpa creates one)"
  # metrics-server must feed it: current CPU utilisation appears in the HPA status.
  until [[ -n "$current" ]]; do
    current="$(kube -n "$NAMESPACE" get hpa "$hpa" -o jsonpath='{.status.currentMetrics[*].resource.current.averageUtilization}' 2>/dev/null || true)"
    [[ -n "$current" ]] && break
    (( SECONDS < deadline )) || fail "HPA $hpa has no current metric after ${HPA_TIMEOUT}s: is metrics-server working? (kubectl top pods -n $NAMESPACE)"
    sleep "$POLL_SECONDS"
  done
  kube -n "$NAMESPACE" get hpa "$hpa"
  log "HPA $hpa sees CPU utilisation ${current}%"
}

prometheus_query() {  # prometheus_query PROMQL -> prints the first sample value, or nothing
  "$PY" - "http://127.0.0.1:$PROMETHEUS_LOCAL_PORT" "$1" <<'EOF'
import json, sys, urllib.parse, urllib.request
base, query = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=10) as r:
        result = json.load(r)["data"]["result"]
except Exception as error:  # not up yet: the caller retries
    print(f"query failed: {error}", file=sys.stderr)
    sys.exit(0)
if result:
    print(result[0]["value"][1])
EOF
}

check_metrics() {
  step "Prometheus metrics"
  kube -n "$MONITORING_NAMESPACE" get svc prometheus-operated >/dev/null \
    || fail "no prometheus-operated Service in $MONITORING_NAMESPACE (kube-prometheus-stack installed?)"
  kube -n "$MONITORING_NAMESPACE" port-forward --address 127.0.0.1 svc/prometheus-operated \
    "$PROMETHEUS_LOCAL_PORT:9090" > "${TMPDIR:-/tmp}/e2e-prometheus-port-forward.log" 2>&1 &
  PORT_FORWARD_PID=$!
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "http://127.0.0.1:$PROMETHEUS_LOCAL_PORT/-/ready"; do
    (( SECONDS < deadline )) || fail "Prometheus does not answer through the port-forward"
    sleep 2
  done
  # Scraped by the chart's PodMonitor: predictions counted during the smoke call and load test.
  local query="sum(rakuten_predictions_total{namespace=\"$NAMESPACE\",model_name=\"$MODEL_NAME\"})"
  local value="" deadline2=$((SECONDS + METRICS_TIMEOUT))
  until [[ -n "$value" ]] && "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)" "$value"; do
    (( SECONDS < deadline2 )) || fail "Prometheus has no $query > 0 after ${METRICS_TIMEOUT}s: is the PodMonitor selected? (see /targets)"
    sleep "$POLL_SECONDS"
    value="$(prometheus_query "$query")"
  done
  log "Prometheus: $query = $value"
  local info
  info="$(prometheus_query "count(rakuten_model_info{namespace=\"$NAMESPACE\"})")"
  [[ -n "$info" ]] || fail "rakuten_model_info is not in Prometheus"
  local rules
  rules="$(curl -fsS "http://127.0.0.1:$PROMETHEUS_LOCAL_PORT/api/v1/rules" | grep -c rakuten || true)"
  if (( rules > 0 )); then
    log "the chart's alerting rules are loaded"
  else
    log "warning: no rule group mentioning 'rakuten' is loaded in Prometheus"
  fi
  stop_port_forward
}

# Re-run the training: a new Job from the chart's CronJob if there is one, else a copy of the
# chart's training Job (a Job cannot be restarted in place). Then wait for it and show its logs.
train_job() {
  step "training rerun"
  local cronjob="" job="" source_job="" name
  if [[ -n "$TRAIN_JOB" ]]; then
    if kube -n "$NAMESPACE" get cronjob "$TRAIN_JOB" >/dev/null 2>&1; then cronjob="$TRAIN_JOB"; else source_job="$TRAIN_JOB"; fi
  else
    cronjob="$(kube -n "$NAMESPACE" get cronjobs -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep -m1 train || true)"
    if [[ -z "$cronjob" ]]; then
      source_job="$(kube -n "$NAMESPACE" get jobs --sort-by=.metadata.creationTimestamp \
        -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep train | head -n 1 || true)"
    fi
  fi
  name="train-manual-$(date +%Y%m%d-%H%M%S)"
  if [[ -n "$cronjob" ]]; then
    log "creating job/$name from cronjob/$cronjob"
    kube -n "$NAMESPACE" create job "$name" --from="cronjob/$cronjob"
  elif [[ -n "$source_job" ]]; then
    log "creating job/$name as a copy of job/$source_job"
    kube -n "$NAMESPACE" get job "$source_job" -o json | "$PY" -c '
import json, sys
job, name = json.load(sys.stdin), sys.argv[1]
generated = {"controller-uid", "job-name", "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name"}
meta = job["metadata"]
job["metadata"] = {"name": name, "namespace": meta["namespace"],
                   "labels": {k: v for k, v in meta.get("labels", {}).items() if k not in generated}}
job.pop("status", None)
spec = job["spec"]
spec.pop("selector", None)
spec.pop("manualSelector", None)
labels = spec["template"].get("metadata", {}).get("labels", {})
for key in generated:
    labels.pop(key, None)
json.dump(job, sys.stdout)
' "$name" | kube create -f -
  else
    fail "no training CronJob or Job found in $NAMESPACE (set TRAIN_JOB=name)"
  fi
  job="$name"
  log "waiting up to ${TRAIN_TIMEOUT}s for job/$job"
  local deadline=$((SECONDS + 120))
  until kube -n "$NAMESPACE" get pods -l "job-name=$job" -o name 2>/dev/null | grep -q .; do
    (( SECONDS < deadline )) || break
    sleep 2
  done
  # Stream the logs while it runs (best effort), then decide on the Job's own status.
  kube -n "$NAMESPACE" logs -f "job/$job" --all-containers --pod-running-timeout=5m || true
  wait_jobs "$TRAIN_TIMEOUT" "$job"
  echo "--- job/$job logs (tail) ---"
  kube -n "$NAMESPACE" logs "job/$job" --all-containers --tail=40 || true
  log "training finished. The predictor loads the newest model version when it starts:"
  log "  $KUBECTL --context $KUBE_CONTEXT -n $NAMESPACE rollout restart deployment/$(isvc)-predictor"
}

run_all() {
  RUN_ALL=1
  local started=$SECONDS
  check_prerequisites
  create_cluster
  build_and_load_images
  install_addons
  install_chart
  wait_training
  wait_ready
  smoke_call
  run_loadtest
  check_hpa
  check_metrics
  if [[ "${E2E_RERUN_TRAINING:-0}" == 1 ]]; then train_job; fi
  STEP="done"
  echo
  log "PASSED in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
}

trap on_exit EXIT
case "${1:-all}" in
  all) run_all ;;
  prereqs) check_prerequisites ;;
  wait-training) wait_training ;;
  wait-ready) wait_ready ;;
  smoke) smoke_call ;;
  loadtest) run_loadtest ;;
  check-hpa) check_hpa ;;
  check-metrics) check_metrics ;;
  train-job) train_job ;;
  diagnostics) STEP="diagnostics (on request)"; collect_diagnostics; log "written to $DIAG_DIR" ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' ;;
  *) echo "unknown step '$1' (see $0 --help)" >&2; exit 2 ;;
esac
