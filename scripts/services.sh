#!/usr/bin/env bash
# The project's dev services in one place.
#   scripts/services.sh up     [slurm] [chromium] [mlflow]   default: slurm chromium (what `make test` needs;
#                                                            the tests start their own MLflow server)
#   scripts/services.sh down   [slurm] [mlflow]              default: both; state dirs are kept
#   scripts/services.sh status
# The env vars of the scripts beside this one pass through (SLURM_ROOT, MLFLOW_ROOT, MLFLOW_PORT, ...).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/pidfile.sh
. "$HERE/pidfile.sh"
cmd=${1:-}; shift || true

up() {
  local T0 svcs=("$@"); T0=$(date +%s)
  [ $# -gt 0 ] || svcs=(slurm chromium)
  for s in "${svcs[@]}"; do
    case $s in
      slurm) bash "$HERE/slurm_up.sh" ;;
      chromium) bash "$HERE/chromium_install.sh" ;;
      mlflow) bash "$HERE/mlflow_up.sh" ;;
      *) echo "unknown service '$s' (slurm, chromium, mlflow)" >&2; exit 2 ;;
    esac
  done
  echo "[services] ${svcs[*]} up in $(( $(date +%s) - T0 ))s"
}

down() {
  local svcs=("$@")
  [ $# -gt 0 ] || svcs=(slurm mlflow)
  for s in "${svcs[@]}"; do
    case $s in
      slurm) bash "$HERE/slurm_down.sh" ;;
      mlflow) bash "$HERE/mlflow_down.sh" ;;
      chromium) ;;  # nothing runs
      *) echo "unknown service '$s' (slurm, mlflow)" >&2; exit 2 ;;
    esac
  done
}

status() {
  local sroot=${SLURM_ROOT:-/tmp/gatesweep-slurm}
  local pidfile=${MLFLOW_ROOT:-/tmp/gatesweep-mlflow}/server.pid
  # check the pid first: sinfo retries a stopped controller for ~9 s
  if pid_running "$sroot/run/slurmctld.pid" slurmctld &&
     SLURM_CONF=$sroot/etc/slurm.conf timeout 15 sinfo 2>/dev/null; then :; else echo "slurm: down"; fi
  if pid_running "$pidfile" mlflow; then
    echo "mlflow: running (pid $(cat "$pidfile"), http://${MLFLOW_HOST:-127.0.0.1}:${MLFLOW_PORT:-5055})"
  else
    echo "mlflow: down"
  fi
  if [ -x /usr/bin/chromium ]; then echo "chromium: installed"; else echo "chromium: missing"; fi
}

case $cmd in
  up) up "$@" ;;
  down) down "$@" ;;
  status) status ;;
  *) echo "usage: $0 {up|down|status} [slurm] [chromium] [mlflow]" >&2; exit 2 ;;
esac
