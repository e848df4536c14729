#!/usr/bin/env bash
# Start a local `mlflow server` (sqlite backend, artifacts proxied: clients upload them over HTTP
# into $MLFLOW_ARTIFACT_ROOT on the server's host, so trainers on compute nodes need no shared
# filesystem and nothing lands in a node's /tmp), wait for /health and
# write $MLFLOW_ROOT/env.sh (export MLFLOW_TRACKING_URI=...). Idempotent: a healthy server
# started earlier from the same MLFLOW_ROOT is reused.
#
# Env: MLFLOW_ROOT (/tmp/gatesweep-mlflow)  MLFLOW_HOST (127.0.0.1)  MLFLOW_PORT (5055)
#      VENV (<repo>/.venv)  MLFLOW_BACKEND_URI (sqlite:///$MLFLOW_ROOT/mlflow.db)
#      MLFLOW_ARTIFACT_ROOT ($MLFLOW_ROOT/mlartifacts)  MLFLOW_WORKERS (1)
#      MLFLOW_HEALTH_TIMEOUT (120 s)  MLFLOW_SERVER_ARGS (extra flags, e.g. --allowed-hosts ...)
#      MLFLOW_APP (gatesweep: `--app-name gatesweep`, MLflow's server plus the read-only routes that make
#      `gatesweep table`/`report` fast and cached, analysis.server_app; empty: a plain `mlflow server`)
# Usage: bash scripts/mlflow_up.sh && source "${MLFLOW_ROOT:-/tmp/gatesweep-mlflow}/env.sh"
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${MLFLOW_ROOT:-/tmp/gatesweep-mlflow}
HOST=${MLFLOW_HOST:-127.0.0.1}
PORT=${MLFLOW_PORT:-5055}
VENV=${VENV:-$REPO/.venv}
BACKEND=${MLFLOW_BACKEND_URI:-sqlite:///$ROOT/mlflow.db}
ARTIFACTS=${MLFLOW_ARTIFACT_ROOT:-$ROOT/mlartifacts}
TIMEOUT=${MLFLOW_HEALTH_TIMEOUT:-120}
APP=${MLFLOW_APP-gatesweep}
PIDFILE=$ROOT/server.pid
LOG=$ROOT/server.log
case $HOST in 0.0.0.0|::|'[::]') CLIENT_HOST=127.0.0.1 ;; *) CLIENT_HOST=$HOST ;; esac
URI=http://$CLIENT_HOST:$PORT

T0=$(date +%s.%N)
el() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
die() { echo "[mlflow_up] ERROR: $*" >&2; exit 1; }
[ -x "$VENV/bin/mlflow" ] || die "$VENV/bin/mlflow not found: set VENV to a venv with mlflow installed"

# One Python poll loop (curl is not on a bare Debian); it exits 0 once /health answers OK,
# 1 when the server process is gone, 2 on timeout.
wait_healthy() {
  "$VENV/bin/python" - "$URI/health" "$(cat "$PIDFILE" 2>/dev/null || echo 0)" "$1" <<'EOF'
import os, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + timeout
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    if time.monotonic() > end:
        sys.exit(2)
    time.sleep(0.2)
EOF
}
write_env() { echo "export MLFLOW_TRACKING_URI=$URI" > "$ROOT/env.sh"; }

# shellcheck source=scripts/pidfile.sh
. "$REPO/scripts/pidfile.sh"
mkdir -p "$ROOT" "$ARTIFACTS"
if pid_running "$PIDFILE" mlflow; then
  wait_healthy "$TIMEOUT" || die "server pid $(cat "$PIDFILE") from $PIDFILE is not healthy at $URI (log: $LOG)"
  write_env
  echo "[mlflow_up] already running at $URI (pid $(cat "$PIDFILE"))"
  exit 0
fi
if "$VENV/bin/python" -c "import socket,sys; socket.create_connection(('$CLIENT_HOST', $PORT), 1)" 2>/dev/null; then
  die "port $PORT on $CLIENT_HOST is taken by another process: set MLFLOW_PORT"
fi

# MLflow 3.x also forks a GenAI job runner + ~7 huey consumers (~240 MB each) unless told not to.
# setsid: the server gets its own process group, which mlflow_down.sh stops as a whole.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
# shellcheck disable=SC2086  # MLFLOW_SERVER_ARGS is a list of flags
setsid bash -c 'echo $$ > "$0"; exec "$@"' "$PIDFILE" "$VENV/bin/mlflow" server \
  --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" \
  --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-1}" ${APP:+--app-name "$APP"} ${MLFLOW_SERVER_ARGS:-} \
  >"$LOG" 2>&1 </dev/null &
for _ in $(seq 1 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done

if ! wait_healthy "$TIMEOUT"; then
  tail -n 40 "$LOG" >&2
  die "mlflow server not healthy at $URI after $(el)s (log: $LOG)"
fi
write_env
echo "[mlflow_up] healthy in $(el)s at $URI (pid $(cat "$PIDFILE"), backend $BACKEND)"
