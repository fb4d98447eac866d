#!/usr/bin/env bash
# Entrypoint of the latentserve serving image (deploy/Dockerfile.serve): one Ray node of the compose cluster.
#
#   ray-entrypoint.sh head     Ray head: GCS :6379, dashboard :8265 and the node's metrics :8080 (compose
#                              network only), the Serve controller and gRPC proxy :9000. Once the dashboard answers it
#                              deploys $LATENTSERVE_SERVE_CONFIG (deploy/serve_deploy.py = `serve deploy` + wait
#                              for RUNNING) and then stays on the Ray process. A failed first deploy stops the
#                              container (non-zero exit; the restart policy retries and the logs say why).
#   ray-entrypoint.sh worker   joins $RAY_HEAD_ADDRESS (default ray-head:6379) with `ray start --block`.
#   ray-entrypoint.sh CMD...   anything else runs as given (e.g. `latentserve models --repo /models`, bash).
#
# Metrics: head and workers both start the node's metrics exporter (services/observability/exporter.py) on
# :$LATENTSERVE_METRICS_PORT (8080), which serves the latentserve_* series every replica process of this node
# records into $LATENTSERVE_METRICS_DIR, plus Ray's own metrics from Ray's export port (8090, container-local
# use only): Prometheus scrapes one endpoint per node (deploy/prometheus.yml).
#
# Ray token authentication stays on: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (the compose secret) are
# checked here so a missing token fails with instructions instead of an "InvalidAuthToken" later. On SIGTERM
# (`docker compose stop`, scale down) `ray start --block` itself marks the node draining, lets Serve move
# replicas and finish in-flight requests (up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, 30 s by default),
# then stops the node's processes; stop_grace_period in docker-compose.yml leaves room for that.
#
# Optional environment: RAY_NUM_CPUS, RAY_NUM_GPUS (default: detected), RAY_OBJECT_STORE_MEMORY (bytes;
# default: Ray's, capped at 90% of /dev/shm = the container's shm_size, so the store stays in shared memory), LATENTSERVE_DEPLOY_TIMEOUT_S (600), LATENTSERVE_ALLOW_NO_API_TOKEN=1 to
# serve without LATENTSERVE_API_TOKEN (not for a published port). Ports (change them together with
# docker-compose.yml and deploy/prometheus.yml): RAY_GCS_PORT 6379, RAY_DASHBOARD_PORT 8265,
# RAY_DASHBOARD_AGENT_PORT 52365, RAY_METRICS_EXPORT_PORT 8090, LATENTSERVE_METRICS_PORT 8080; RAY_TEMP_DIR
# (head only, default /tmp/ray).
set -euo pipefail

MODE="${1:-head}"
GCS_PORT="${RAY_GCS_PORT:-6379}"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
AGENT_PORT="${RAY_DASHBOARD_AGENT_PORT:-52365}"  # Ray's default agent port; deploy/healthcheck.py probes it
METRICS_PORT="${RAY_METRICS_EXPORT_PORT:-8090}"  # Ray's own; the node exporter re-serves it
NODE_METRICS_PORT="${LATENTSERVE_METRICS_PORT:-8080}"  # the node's /metrics (latentserve_* + Ray's)
SERVE_CONFIG="${LATENTSERVE_SERVE_CONFIG:-/app/deploy/serve.yaml}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "ray-entrypoint[$MODE]: $*" >&2; }
die() { log "error: $*"; exit 1; }

check_ray_auth() {
  if [ "${RAY_AUTH_MODE:-}" != "token" ]; then
    die "RAY_AUTH_MODE is '${RAY_AUTH_MODE:-}', expected 'token': this deployment keeps Ray's cluster token" \
        "authentication on (set it in docker-compose.yml, never 'disabled')"
  fi
  local f="${RAY_AUTH_TOKEN_PATH:-}"
  [ -n "$f" ] || die "RAY_AUTH_TOKEN_PATH is not set (it must name the ray_auth_token compose secret)"
  [ -e "$f" ] || die "Ray token $f is missing: create secrets/ray_auth_token on the host (deploy/README.md)"
  [ -r "$f" ] || die "Ray token $f is not readable by uid $(id -u): chmod 0644 (or chown $(id -u)) secrets/ray_auth_token on the host"
  [ -n "$(tr -d '[:space:]' < "$f")" ] || die "Ray token $f is empty: regenerate secrets/ray_auth_token (deploy/README.md)"
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

common_ray_args() {
  RAY_ARGS=(--block --disable-usage-stats --metrics-export-port="$METRICS_PORT"
            --dashboard-agent-listen-port="$AGENT_PORT")
  if [ -n "${RAY_NUM_CPUS:-}" ]; then
    is_uint "$RAY_NUM_CPUS" || die "RAY_NUM_CPUS must be a whole number, got '$RAY_NUM_CPUS'"
    RAY_ARGS+=(--num-cpus="$RAY_NUM_CPUS")
  fi
  if [ -n "${RAY_NUM_GPUS:-}" ]; then
    is_uint "$RAY_NUM_GPUS" || die "RAY_NUM_GPUS must be a whole number, got '$RAY_NUM_GPUS'"
    RAY_ARGS+=(--num-gpus="$RAY_NUM_GPUS")
  fi
  local store="${RAY_OBJECT_STORE_MEMORY:-}"
  if [ -z "$store" ]; then
    # Ray's default object store (30% of the node's memory) is bigger than a 2 GB /dev/shm on most hosts, and
    # then Ray puts it on disk ("The object store is using /tmp instead of /dev/shm") or refuses to start.
    # Cap it at 90% of /dev/shm (= the container's shm_size); leave Ray's default when that already fits.
    local shm_cap
    shm_cap="$(python - <<'PY' 2>/dev/null || echo 0
import os
st = os.statvfs("/dev/shm")
shm = st.f_frsize * st.f_blocks
try:
    from ray._common.utils import get_system_memory  # the memory Ray sizes from (cgroup-aware)
    mem = get_system_memory()
except Exception:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
print(int(shm * 0.9) if mem * 0.3 > shm * 0.9 else 0)
PY
)"
    if (( shm_cap > 0 && shm_cap < 512 * 1024 * 1024 )); then
      log "warning: /dev/shm is only $(( shm_cap * 10 / 9 )) bytes: set shm_size (docker-compose.yml) to 2gb or more"
    fi
    if (( shm_cap >= 80 * 1024 * 1024 )); then  # Ray's minimum object store is 75 MiB
      store="$shm_cap"
    fi
  fi
  if [ -n "$store" ]; then
    is_uint "$store" || die "RAY_OBJECT_STORE_MEMORY is in bytes, got '$store'"
    RAY_ARGS+=(--object-store-memory="$store")
  fi
}

# The node's metrics endpoint, in the background for the container's life (tini reaps it). The directory is
# emptied first: files of processes from before a container restart would otherwise be summed again.
start_metrics_exporter() {
  if [ "$NODE_METRICS_PORT" = "0" ] || [ -z "${LATENTSERVE_METRICS_DIR:-}" ]; then
    log "metrics exporter off (LATENTSERVE_METRICS_PORT=0 or LATENTSERVE_METRICS_DIR unset)"
    return 0
  fi
  rm -rf "$LATENTSERVE_METRICS_DIR"
  mkdir -p "$LATENTSERVE_METRICS_DIR"
  LATENTSERVE_METRICS_PORT="$NODE_METRICS_PORT" python -m latentserve.services.observability.exporter \
      --ray-metrics-port "$METRICS_PORT" &
  log "metrics exporter on :$NODE_METRICS_PORT/metrics (Ray's metrics from :$METRICS_PORT)"
}

# Wait until an auth-exempt Ray health URL answers 200, while the Ray process is still alive.
wait_http_ok() {
  local url="$1" timeout_s="$2" pid="$3" start=$SECONDS
  until python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=3).status != 200)" "$url" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || return 1
    if (( SECONDS - start > timeout_s )); then return 1; fi
    sleep 1
  done
}

run_head() {
  check_ray_auth
  if [ -z "${LATENTSERVE_API_TOKEN:-}" ] && [ "${LATENTSERVE_ALLOW_NO_API_TOKEN:-0}" != "1" ]; then
    die "LATENTSERVE_API_TOKEN is empty: gRPC on the published port would accept anyone. Set it in .env" \
        "(deploy/env.example) or LATENTSERVE_ALLOW_NO_API_TOKEN=1 for a private network"
  fi
  [ -r "$SERVE_CONFIG" ] || die "Serve config $SERVE_CONFIG not found (docker-compose.yml mounts deploy/serve.yaml there)"
  common_ray_args
  if [ -n "${RAY_TEMP_DIR:-}" ]; then
    RAY_ARGS+=(--temp-dir="$RAY_TEMP_DIR")  # head only: workers take the head's
  fi
  start_metrics_exporter
  log "starting the Ray head (GCS :$GCS_PORT, dashboard :$DASHBOARD_PORT, Ray metrics :$METRICS_PORT)"
  ray start --head --port="$GCS_PORT" --dashboard-host=0.0.0.0 --dashboard-port="$DASHBOARD_PORT" \
      "${RAY_ARGS[@]}" &
  local ray_pid=$!
  # Forward docker's SIGTERM to `ray start --block`, which drains and stops the node itself.
  trap 'log "SIGTERM: stopping Ray (drains first)"; kill -TERM "$ray_pid" 2>/dev/null || true' TERM INT

  if ! wait_http_ok "http://127.0.0.1:$DASHBOARD_PORT/api/gcs_healthz" 180 "$ray_pid"; then
    if kill -0 "$ray_pid" 2>/dev/null; then
      kill -TERM "$ray_pid" 2>/dev/null || true
      wait "$ray_pid" 2>/dev/null || true
      die "the Ray head did not answer on :$DASHBOARD_PORT within 180 s (Ray's log above; deploy/README.md, Troubleshooting)"
    fi
    die "Ray exited during start-up (its error is above; deploy/README.md, Troubleshooting)"
  fi
  log "Ray is up; deploying $SERVE_CONFIG"
  if ! python "$HERE/serve_deploy.py" --config "$SERVE_CONFIG" --address "http://127.0.0.1:$DASHBOARD_PORT" \
      --timeout "${LATENTSERVE_DEPLOY_TIMEOUT_S:-600}"; then
    log "error: the first deploy failed (details above); stopping so the restart policy retries"
    kill -TERM "$ray_pid" 2>/dev/null || true
    wait "$ray_pid" 2>/dev/null || true
    exit 1
  fi
  # `wait` returns early when a trapped signal arrives; keep waiting until Ray has really exited.
  local rc=0
  while kill -0 "$ray_pid" 2>/dev/null; do
    set +e
    wait "$ray_pid"
    rc=$?
    set -e
  done
  log "Ray exited ($rc)"
  exit "$rc"
}

run_worker() {
  check_ray_auth
  common_ray_args
  local head="${RAY_HEAD_ADDRESS:-ray-head:$GCS_PORT}"
  local host="${head%:*}" port="${head##*:}"
  local wait_s="${RAY_HEAD_WAIT_S:-300}" start=$SECONDS
  # The head container may still be starting (or restarting): wait for its GCS port instead of failing.
  until python -c "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()" \
      "$host" "$port" 2>/dev/null; do
    if (( SECONDS - start > wait_s )); then
      die "Ray head $head not reachable after ${wait_s} s"
    fi
    sleep 2
  done
  # Preflight with this node's token: a wrong token would otherwise make `ray start` retry forever with
  # "InvalidAuthToken" in its log while the container just looks unhealthy.
  local out
  until out="$(ray health-check --address "$head" 2>&1)"; do
    if grep -q "InvalidAuthToken" <<< "$out"; then
      die "the head refused this node's Ray token (InvalidAuthToken): head and workers must mount the same" \
          "secrets/ray_auth_token; after regenerating it recreate all Ray containers (deploy/README.md)"
    fi
    if (( SECONDS - start > wait_s )); then
      die "Ray head $head not healthy after ${wait_s} s: $(tail -n 3 <<< "$out")"
    fi
    sleep 2
  done
  start_metrics_exporter
  log "joining the Ray cluster at $head"
  # exec: tini delivers SIGTERM straight to `ray start --block` (drain, then stop).
  exec ray start --address="$head" "${RAY_ARGS[@]}"
}

case "$MODE" in
  head) run_head ;;
  worker) run_worker ;;
  *) exec "$@" ;;
esac
