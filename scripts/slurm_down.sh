#!/usr/bin/env bash
# Stop the cluster started by scripts/slurm_up.sh: cancel jobs, stop the daemons by PID file; of a
# multi-node cluster also every process left in its nodes' namespaces, the namespaces, the bridge and
# the /etc/hosts lines. State, logs and the accounting database stay under $SLURM_ROOT; SLURM_PURGE=1
# deletes them too.
# Env: SLURM_ROOT (/tmp/gatesweep-slurm)  SLURM_PURGE (0)
set -uo pipefail
ROOT=${SLURM_ROOT:-/tmp/gatesweep-slurm}
export SLURM_CONF=$ROOT/etc/slurm.conf
T0=$(date +%s.%N)

# shellcheck source=scripts/pidfile.sh
. "$(dirname "${BASH_SOURCE[0]}")/pidfile.sh"
# the prefix and net the cluster was made with (slurm_up.sh wrote them), not this shell's
# shellcheck disable=SC1091
[ -f "$ROOT/etc/net.env" ] && . "$ROOT/etc/net.env"
# shellcheck source=scripts/slurm_net.sh
. "$(dirname "${BASH_SOURCE[0]}")/slurm_net.sh"

stop_pidfile() {  # stop_pidfile <pidfile> <name>: SIGTERM, wait up to 10 s, then SIGKILL
  local f=$1 name=$2 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if pid_running "$f" "$name"; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "[slurm_down] $name ($pid) ignored SIGTERM: SIGKILL"; kill -9 "$pid"; fi
    echo "[slurm_down] stopped $name ($pid)"
  fi
  rm -f "$f"
}

if pid_running "$ROOT/run/slurmctld.pid" slurmctld; then
  scancel --quiet --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 1 50); do [ -z "$(squeue -h -t R,CG,PD 2>/dev/null)" ] && break; sleep 0.1; done
fi
# each daemon takes 1-2 s to exit: stop them in three waves (slurmdbd flushes to MariaDB last)
# slurmd.pid (one node) or slurmd-<node>.pid (several); not slurmd*.pid, which would take slurmdbd.pid
for f in "$ROOT"/run/slurmd.pid "$ROOT"/run/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd & done
stop_pidfile "$ROOT/run/slurmctld.pid" slurmctld &
wait
test_hosts_down "$ROOT"  # several nodes: job steps a dead slurmd left behind go with their node
if [ -e "$ROOT/run/munged.ours" ]; then
  stop_pidfile /run/munge/munged.pid munged &
  rm -f "$ROOT/run/munged.ours"
fi
stop_pidfile "$ROOT/run/slurmdbd.pid"  slurmdbd
wait
stop_pidfile "$ROOT/mysql/mysqld.pid"  mariadbd
if [ "${SLURM_PURGE:-0}" = 1 ]; then rm -rf "$ROOT" && echo "[slurm_down] removed $ROOT"; fi
echo "[slurm_down] done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
exit 0
