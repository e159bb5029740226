#!/usr/bin/env bash
# Start a local Docker engine in the background unless one already answers, then wait
# (bounded) until `docker info` works. Idempotent: safe to call from make, the tests and CI.
#
# For machines without systemd (containers, CI sandboxes). With a service manager, start the
# engine the usual way and this script just finds it running.
#
#   scripts/start-dockerd.sh            # waits up to DOCKERD_TIMEOUT seconds (default 60)
#
# Env: DOCKERD_TIMEOUT, DOCKERD_LOG (default /var/log/rakuten-dockerd.log),
#      DOCKERD_INSTALL=1 to `apt-get install docker.io` when dockerd is missing (root only).
set -euo pipefail

TIMEOUT="${DOCKERD_TIMEOUT:-60}"
LOG="${DOCKERD_LOG:-/var/log/rakuten-dockerd.log}"
DOCKER_CLI="${DOCKER:-docker}"

engine_up() { timeout 10 "$DOCKER_CLI" info >/dev/null 2>&1; }
# A running process (a killed engine can linger as a zombie, which `kill -0` still finds).
alive() {
  local state
  [[ -n "$1" && -r "/proc/$1/stat" ]] || return 1
  state="$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)"
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

if engine_up; then
  echo "start-dockerd: Docker engine already running"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [[ "${DOCKERD_INSTALL:-0}" == 1 && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "start-dockerd: installing docker.io"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  else
    echo "start-dockerd: dockerd is not installed (apt-get install docker.io, or set DOCKERD_INSTALL=1)" >&2
    exit 2
  fi
fi
if ! command -v "$DOCKER_CLI" >/dev/null 2>&1; then
  echo "start-dockerd: no docker client '$DOCKER_CLI'" >&2
  exit 2
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "start-dockerd: no running Docker engine, and only root can start dockerd here" >&2
  exit 2
fi

# A dockerd of ours may be starting already (two callers at once): only one starts it.
PIDFILE=/var/run/docker.pid
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid
start_engine() {
  # A containerd killed along with a previous engine may still be a zombie: dockerd would
  # take it for running and wait for its socket until it gives up.
  alive "$(cat "$CONTAINERD_PIDFILE" 2>/dev/null || true)" || rm -f "$CONTAINERD_PIDFILE"
  rm -f "$PIDFILE"
  mkdir -p "$(dirname "$LOG")"
  echo "start-dockerd: starting dockerd (log: $LOG)"
  # setsid: the engine outlives the calling shell; its own process group, so stopping the
  # caller's job does not take the engine down mid-build.
  setsid dockerd --pidfile "$PIDFILE" >>"$LOG" 2>&1 < /dev/null &
  pid=$!
}

pid="$(cat "$PIDFILE" 2>/dev/null || true)"
if alive "$pid" && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]; then
  echo "start-dockerd: dockerd $pid is starting, waiting for it"
else
  start_engine
fi

deadline=$((SECONDS + TIMEOUT))
retries=1
until engine_up; do
  if (( SECONDS >= deadline )); then
    echo "start-dockerd: engine not ready after ${TIMEOUT}s; last log lines:" >&2
    tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
  if ! alive "$pid"; then
    if (( retries-- > 0 )); then
      echo "start-dockerd: dockerd exited during start-up, trying once more"
      sleep 1
      start_engine
      continue
    fi
    echo "start-dockerd: dockerd exited; last log lines:" >&2
    tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
  sleep 0.5
done
echo "start-dockerd: Docker engine ready"
