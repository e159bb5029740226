#!/usr/bin/env bash
# Dump what a failed cluster run needs into a folder: `make cluster-diagnostics` (and `make e2e`
# on failure) call it. Best effort: every command may fail (a half-installed cluster) and the
# dump goes on. Portable (bash 3.2+, no GNU-only tools).
#
#   scripts/cluster-diagnostics.sh [DIR]        # default build/e2e-diagnostics
#
# Env (the make targets pass theirs): KUBECTL, HELM, KIND, KUBE_CONTEXT (kind-$CLUSTER_NAME),
# CLUSTER_NAME (rakuten), NAMESPACE (rakuten), RELEASE (rakuten-serving), MONITORING_NAMESPACE
# (monitoring), KIND_LOGS (1: also `kind export logs`).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tool() { if [[ -x "$REPO/.tools/bin/$1" ]]; then echo "$REPO/.tools/bin/$1"; else echo "$1"; fi; }
DIR="${1:-build/e2e-diagnostics}"
KUBECTL="${KUBECTL:-$(tool kubectl)}"
HELM="${HELM:-$(tool helm)}"
KIND="${KIND:-kind}"
CLUSTER_NAME="${CLUSTER_NAME:-rakuten}"
KUBE_CONTEXT="${KUBE_CONTEXT:-kind-$CLUSTER_NAME}"
NAMESPACE="${NAMESPACE:-rakuten}"
RELEASE="${RELEASE:-rakuten-serving}"
MONITORING_NAMESPACE="${MONITORING_NAMESPACE:-monitoring}"

kube() { "$KUBECTL" --context "$KUBE_CONTEXT" "$@"; }
dump() {  # dump FILE COMMAND... : output and errors of the command into DIR/FILE
  local file="$1"; shift
  "$@" > "$DIR/$file" 2>&1 || echo "(exit $?)" >> "$DIR/$file"
}

mkdir -p "$DIR/logs"
echo "cluster-diagnostics: context $KUBE_CONTEXT -> $DIR"
{ date -u; echo "context: $KUBE_CONTEXT, namespace: $NAMESPACE, release: $RELEASE"; } > "$DIR/summary.txt"
dump version.txt kube version
dump nodes.txt kube get nodes -o wide
dump get-all.txt kube get all,jobs,cronjobs,pvc,hpa,networkpolicies,secrets,configmaps -A -o wide
dump get-crds.txt kube get crd
dump get-kserve.txt kube get inferenceservices,scaledobjects,podmonitors,prometheusrules -A
dump inferenceservices.yaml kube get inferenceservices -A -o yaml
dump events.txt kube get events -A --sort-by=.lastTimestamp
dump top-pods.txt kube top pods -A
dump "describe-$NAMESPACE.txt" kube -n "$NAMESPACE" describe pods,jobs,cronjobs,inferenceservices,hpa,services,networkpolicies
dump describe-kserve.txt kube -n kserve describe pods
dump helm-list.txt "$HELM" --kube-context "$KUBE_CONTEXT" list -A
dump helm-status.txt "$HELM" --kube-context "$KUBE_CONTEXT" -n "$NAMESPACE" status "$RELEASE"
dump helm-values.txt "$HELM" --kube-context "$KUBE_CONTEXT" -n "$NAMESPACE" get values "$RELEASE" --all
for ns in "$NAMESPACE" kserve "$MONITORING_NAMESPACE" keda knative-serving; do
  for pod in $(kube -n "$ns" get pods -o name 2>/dev/null); do
    name="$ns-${pod#pod/}"
    kube -n "$ns" logs "$pod" --all-containers --prefix --tail=2000 > "$DIR/logs/$name.log" 2>&1
    kube -n "$ns" logs "$pod" --all-containers --prefix --previous --tail=500 > "$DIR/logs/$name.previous.log" 2>/dev/null \
      || rm -f "$DIR/logs/$name.previous.log"
  done
done
if [[ "${KIND_LOGS:-1}" == 1 ]] && command -v "$KIND" >/dev/null 2>&1; then
  "$KIND" export logs "$DIR/kind" --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
fi
echo "--- pods in $NAMESPACE ---" >&2
kube -n "$NAMESPACE" get pods -o wide >&2 || true
echo "--- last events in $NAMESPACE ---" >&2
kube -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 25 >&2 || true
echo "cluster-diagnostics: written to $DIR"
