#!/usr/bin/env bash
# Stop the server started by scripts/mlflow_up.sh: SIGTERM to its process group (the CLI, the
# uvicorn worker and any job runners), SIGKILL after 10 s. Data under $MLFLOW_ROOT stays.
# Env: MLFLOW_ROOT (/tmp/gatesweep-mlflow)
set -uo pipefail
ROOT=${MLFLOW_ROOT:-/tmp/gatesweep-mlflow}
PIDFILE=$ROOT/server.pid
[ -s "$PIDFILE" ] || { echo "[mlflow_down] not running (no $PIDFILE)"; exit 0; }
# shellcheck source=scripts/pidfile.sh
. "$(dirname "${BASH_SOURCE[0]}")/pidfile.sh"
pid=$(cat "$PIDFILE")
if pid_running "$PIDFILE" mlflow; then
  # mlflow_up.sh started it with setsid, so its process group id is its pid
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 -- "-$pid" 2>/dev/null; then
    echo "[mlflow_down] process group $pid ignored SIGTERM: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null
  fi
  echo "[mlflow_down] stopped mlflow server ($pid)"
fi
rm -f "$PIDFILE"
exit 0
