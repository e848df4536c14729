#!/usr/bin/env bash
# Bring up a real Slurm cluster on this machine (Debian 12, slurm-wlm 22.05 + munge):
#   - SLURM_NODES=1: one node, "localhost" on 127.0.0.1
#   - SLURM_NODES=N>=2: N test hosts gsnode1..N, each a network namespace with its own address and
#     hostname on a bridge this script creates (scripts/slurm_net.sh says how and why); slurmctld and
#     slurmdbd on the login host's bridge address. Start-up: see README ("Local dev cluster").
#   - 8 fake GPUs per node: gres/gpu backed by /dev/null symlinks (Slurm drops a file-less GPU GRES)
#   - 16 advertised CPUs per node on a small box (SlurmdParameters=config_overrides); no cgroups
#   - accounting through slurmdbd + MariaDB on 127.0.0.1, so `sacct` (which submitit polls) works
#   - time-based FirstJobId, so a fresh state dir never reuses job ids of an earlier cluster
# Idempotent: installs missing Debian packages, reuses running daemons (restarts them when the
# generated config changed), and fails loudly with the logs when the node does not become usable.
#
# Env: SLURM_ROOT (/tmp/gatesweep-slurm)  SLURM_NODES (the running config's count, else 3)
#      SLURM_PARTITION_NAME (debug)  SLURM_FAKE_CPUS (16)  SLURM_FAKE_GPUS (8)  SLURM_MEM_MB (16000)
#      SLURM_FIRST_JOB_ID (time-based)  ports: SLURMCTLD_PORT (6817) SLURMD_PORT (6818) SLURMDBD_PORT (6819)
#      SLURM_DB_PORT (3307, MariaDB)  test hosts: SLURM_NODE_PREFIX (gsnode) SLURM_NET_PREFIX (198.18.13)
# Daemons listen on 127.0.0.1 (one node) or on the cluster's bridge (several); MariaDB on 127.0.0.1 only.
# Two clusters at once need their own SLURM_ROOT, ports and (multi-node) node prefix and net.
# Run slurm_down.sh before changing the ports, the prefix or SLURM_ROOT.
# Usage: bash scripts/slurm_up.sh && source "${SLURM_ROOT:-/tmp/gatesweep-slurm}/env.sh"
set -euo pipefail

ROOT=${SLURM_ROOT:-/tmp/gatesweep-slurm}
PARTITION=${SLURM_PARTITION_NAME:-debug}
NCPUS=${SLURM_FAKE_CPUS:-16}
NGPUS=${SLURM_FAKE_GPUS:-8}
MEM_MB=${SLURM_MEM_MB:-16000}
DB_PORT=${SLURM_DB_PORT:-3307}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
DBD_PORT=${SLURMDBD_PORT:-6819}
CONF=$ROOT/etc/slurm.conf
DB=$ROOT/mysql
# sticky: a later call without SLURM_NODES (a test, services-up) keeps the cluster as it is
NODES=${SLURM_NODES:-$(sed -n 's/^# nodes: //p' "$CONF" 2>/dev/null || true)}
NODES=${NODES:-3}
[[ $NODES =~ ^[1-9][0-9]?$ ]] || { echo "[slurm_up] ERROR: SLURM_NODES=$NODES: give a number of nodes, 1-99" >&2; exit 2; }

T0=$(date +%s.%N)
el() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "[slurm_up +$(el)s] $*"; }
die() { echo "[slurm_up] ERROR: $*" >&2; exit 1; }

wait_for() {  # wait_for <seconds> <what> <cmd...>: poll until cmd succeeds
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "[slurm_up] TIMEOUT after ${secs}s waiting for $what" >&2; return 1; }
    sleep 0.1
  done
}
# shellcheck source=scripts/pidfile.sh
. "$(dirname "${BASH_SOURCE[0]}")/pidfile.sh"
alive() { local n; n=$(basename "$1" .pid); pid_running "$1" "${n%%-*}"; }  # alive <dir>/<daemon>[-<node>].pid
stop_pidfile() {  # stop_pidfile <pidfile>: SIGTERM, wait up to 10 s, then SIGKILL
  alive "$1" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1"); kill "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$1"
}
port_taken() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }  # port_taken <port> [host]
# start_daemon <pidfile> <port> <name> <cmd...>: unless ours runs already; another cluster's daemon
# on the same port would silently answer our clients instead, so refuse that
start_daemon() {
  local pidfile=$1 port=$2 name=$3; shift 3
  alive "$pidfile" && return 0
  port_taken "$port" "$CTL_ADDR" && die "port $port is taken on $CTL_ADDR ($name of another Slurm? stop it, e.g. SLURM_ROOT=<its root> scripts/slurm_down.sh, or set the ports: see the header)"
  "$@"
}
show_logs() {
  sinfo -N -l >&2 || true; scontrol show node >&2 || true
  for f in "$ROOT"/log/slurmctld.log "$ROOT"/log/slurmd.log "$ROOT"/log/slurmd-*.log "$ROOT"/log/slurmdbd.log "$DB"/error.log; do
    [ -f "$f" ] && { echo "---- tail $f" >&2; tail -n 30 "$f" >&2; }
  done
  return 0
}

# sticky too: the node names and net of this root's running cluster (slurm_down.sh removes them by these)
if [ -f "$ROOT/etc/net.env" ]; then
  given_prefix=${SLURM_NODE_PREFIX:-} given_net=${SLURM_NET_PREFIX:-}
  # shellcheck disable=SC1091
  . "$ROOT/etc/net.env"
  [ "${given_prefix:-$SLURM_NODE_PREFIX}${given_net:-$SLURM_NET_PREFIX}" = "$SLURM_NODE_PREFIX$SLURM_NET_PREFIX" ] ||
    die "$ROOT's cluster has nodes ${SLURM_NODE_PREFIX}N on $SLURM_NET_PREFIX.0/24: run slurm_down.sh before changing them"
fi
# shellcheck source=scripts/slurm_net.sh
. "$(dirname "${BASH_SOURCE[0]}")/slurm_net.sh"
if [ "$NODES" = 1 ]; then
  CTL_HOST=localhost CTL_ADDR=127.0.0.1
  NODE_NAMES=(localhost)
else
  CTL_HOST=$LOGIN_HOST CTL_ADDR=$LOGIN_ADDR
  NODE_NAMES=(); for i in $(seq 1 "$NODES"); do NODE_NAMES+=("$(node_name "$i")"); done
fi
# as_host <cmd...>: run a daemon under the controller's hostname (slurmctld and slurmdbd check that
# they run on SlurmctldHost / DbdHost; "localhost" always passes)
as_host() { if [ "$NODES" = 1 ]; then "$@"; else unshare --uts sh -c 'hostname "$0" && exec "$@"' "$CTL_HOST" "$@"; fi; }
nodelist() { local IFS=,; echo "${NODE_NAMES[*]}"; }

mkdir -p "$ROOT"/{etc,state,spool,log,run,fakegpu} "$DB"

# ---------------------------------------------------------------- packages
pkgs=()
command -v slurmctld >/dev/null || pkgs+=(slurmctld)
command -v slurmd    >/dev/null || pkgs+=(slurmd)
command -v sbatch    >/dev/null || pkgs+=(slurm-client)
command -v munged    >/dev/null || pkgs+=(munge)
command -v slurmdbd  >/dev/null || pkgs+=(slurmdbd)
command -v mariadbd  >/dev/null || pkgs+=(mariadb-server)
[ "$NODES" = 1 ] || command -v ip >/dev/null || pkgs+=(iproute2)  # the test hosts: netns, veth, bridge
if [ ${#pkgs[@]} -gt 0 ]; then
  log "apt-get install ${pkgs[*]}"
  # One apt at a time across our scripts (services-up may run them together); the packages'
  # own service starts are blocked by policy-rc.d or harmless: we start our daemons ourselves.
  if ! flock /tmp/gatesweep-apt.lock bash -c '
      export DEBIAN_FRONTEND=noninteractive
      apt-get -o DPkg::Lock::Timeout=300 update -qq &&
      apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@"' _ "${pkgs[@]}" \
      >"$ROOT/log/apt.log" 2>&1; then
    tail -n 40 "$ROOT/log/apt.log" >&2
    die "apt-get install ${pkgs[*]} failed (full log: $ROOT/log/apt.log)"
  fi
  log "packages installed"
fi

# ---------------------------------------------------------------- config
FIRST_JOB_ID=${SLURM_FIRST_JOB_ID:-$(sed -n 's/^FirstJobId=//p' "$CONF" 2>/dev/null || true)}
FIRST_JOB_ID=${FIRST_JOB_ID:-$(( ($(date +%s) % 6000000) * 10 + 1 ))}
for i in $(seq 0 $((NGPUS - 1))); do ln -sfn /dev/null "$ROOT/fakegpu/nvidia$i"; done
node_line() {  # node_line <name> <addr>
  echo "NodeName=$1 NodeAddr=$2 CPUs=$NCPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$NCPUS ThreadsPerCore=1 RealMemory=$MEM_MB Gres=gpu:$NGPUS State=UNKNOWN"
}
if [ "$NODES" = 1 ]; then
  per_node=""   # one slurmd: today's file names
  nodes_conf=$(node_line localhost 127.0.0.1)
else
  per_node="-%n"  # one slurmd per node: Slurm puts the node's name in place of %n
  nodes_conf=$(for i in $(seq 1 "$NODES"); do node_line "$(node_name "$i")" "$(node_addr "$i")"; done)
fi

cat > "$CONF.new" <<EOF
# generated by scripts/slurm_up.sh: $NODES-node test cluster for gatesweep dev and CI
# nodes: $NODES
ClusterName=gatesweep
SlurmctldHost=$CTL_HOST($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job (lost node, scontrol requeue) starts again once its last credential has expired:
# 30 s instead of Slurm's 120 s keeps node-loss recovery short; a step launch here takes < 1 s
AuthInfo=cred_expire=30
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool${per_node:+/%n}
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd$per_node.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd$per_node.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: the sandbox has no usable cgroup v2 / systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTL_HOST
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
# bind each daemon to its own host's address ($CTL_ADDR, a node's NodeAddr), not to every interface
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# trust this file over the detected hardware (advertise $NCPUS CPUs on a 2-core box)
SlurmdParameters=config_overrides
ReturnToService=2
FirstJobId=$FIRST_JOB_ID
MessageTimeout=10
KillWait=5
MinJobAge=300
InactiveLimit=0
GresTypes=gpu
$nodes_conf
PartitionName=$PARTITION Nodes=$(nodelist) Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$ROOT/etc/gres.conf.new" <<EOF
# fake GPUs: File= must name character devices, hence /dev/null symlinks (never opened: no cgroups)
AutoDetect=off
NodeName=$(nodelist) Name=gpu File=$ROOT/fakegpu/nvidia[0-$((NGPUS - 1))]
EOF
changed=0
cmp -s "$CONF.new" "$CONF" && cmp -s "$ROOT/etc/gres.conf.new" "$ROOT/etc/gres.conf" || changed=1
mv "$CONF.new" "$CONF"; mv "$ROOT/etc/gres.conf.new" "$ROOT/etc/gres.conf"
export SLURM_CONF=$CONF
{
  echo "export SLURM_CONF=$CONF"
  # the login host's address on the nodes' bridge: services the jobs reach (the tests' MLflow server)
  # listen there
  [ "$NODES" = 1 ] || echo "export GATESWEEP_SERVICE_HOST=$LOGIN_ADDR"
} > "$ROOT/env.sh"
slurmd_pidfiles() { ls "$ROOT"/run/slurmd.pid "$ROOT"/run/slurmd-*.pid 2>/dev/null || true; }  # not slurmdbd.pid
if [ "$changed" = 1 ]; then
  for f in $(slurmd_pidfiles) "$ROOT/run/slurmctld.pid"; do
    if alive "$f"; then log "config changed: restarting slurmctld + slurmd"; break; fi
  done
  for f in $(slurmd_pidfiles) "$ROOT/run/slurmctld.pid"; do stop_pidfile "$f" & done; wait
fi

# ---------------------------------------------------------------- test hosts (several nodes)
if [ "$NODES" = 1 ]; then
  test_hosts_down "$ROOT" >/dev/null  # a multi-node cluster of this root ran before
else
  test_hosts_up "$ROOT" "$NODES"
  log "test hosts ready: ${NODE_NAMES[*]} on $NET.0/24 (bridge $BRIDGE, login host $LOGIN_HOST $LOGIN_ADDR)"
fi

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  touch "$ROOT/run/munged.ours"          # slurm_down.sh stops only a munged that we started
  wait_for 10 munged bash -c 'munge -n | unmunge' || die "munged did not start (see /var/log/munge/munged.log)"
fi
log "munged ready"

# ---------------------------------------------------------------- accounting: MariaDB + slurmdbd
db_ping() { mariadb-admin --socket="$DB/mysqld.sock" -uroot ping; }
if [ ! -d "$DB/data/mysql" ]; then
  mariadb-install-db --datadir="$DB/data" --user=root --auth-root-authentication-method=normal \
    --skip-test-db >"$DB/install.log" 2>&1 || { tail -n 30 "$DB/install.log" >&2; die "mariadb-install-db failed"; }
fi
if ! db_ping >/dev/null 2>&1; then
  port_taken "$DB_PORT" && die "port $DB_PORT is taken: set SLURM_DB_PORT"
  setsid mariadbd --no-defaults --datadir="$DB/data" --socket="$DB/mysqld.sock" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --user=root --pid-file="$DB/mysqld.pid" --log-error="$DB/error.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  db_pid=$!
  db_up() { db_ping || { kill -0 "$db_pid" || return 0; return 1; }; }  # stop waiting if it died
  wait_for 60 mariadb db_up; db_ping >/dev/null 2>&1 || { show_logs; die "MariaDB did not start"; }
fi
mariadb --socket="$DB/mysqld.sock" -uroot -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
log "mariadb ready"

cat > "$ROOT/etc/slurmdbd.conf.new" <<EOF
AuthType=auth/munge
DbdHost=$CTL_HOST
DbdAddr=$CTL_ADDR
DbdPort=$DBD_PORT
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$ROOT/log/slurmdbd.log
PidFile=$ROOT/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ROOT/etc/slurmdbd.conf.new"  # slurmdbd refuses a config readable by others
if ! cmp -s "$ROOT/etc/slurmdbd.conf.new" "$ROOT/etc/slurmdbd.conf" && alive "$ROOT/run/slurmdbd.pid"; then
  log "slurmdbd.conf changed: restarting slurmdbd"
  stop_pidfile "$ROOT/run/slurmdbd.pid"
fi
mv "$ROOT/etc/slurmdbd.conf.new" "$ROOT/etc/slurmdbd.conf"
start_daemon "$ROOT/run/slurmdbd.pid" "$DBD_PORT" slurmdbd as_host /usr/sbin/slurmdbd
wait_for 60 slurmdbd sacctmgr -n show cluster || { show_logs; die "slurmdbd did not answer"; }
# capture first: `sacctmgr ... | grep -q` can die of SIGPIPE under pipefail
clusters=$(sacctmgr -n -P show cluster format=cluster)
grep -qx gatesweep <<<"$clusters" || sacctmgr -i add cluster gatesweep >/dev/null
log "slurmdbd ready"

# ---------------------------------------------------------------- slurmctld + slurmd
start_daemon "$ROOT/run/slurmctld.pid" "$CTLD_PORT" slurmctld as_host /usr/sbin/slurmctld -i  # -i: tolerate stale state
if [ "$NODES" = 1 ]; then
  start_daemon "$ROOT/run/slurmd.pid" "$SLURMD_PORT" slurmd /usr/sbin/slurmd -N localhost  # -N: hostname differs
else
  for node in "${NODE_NAMES[@]}"; do
    alive "$ROOT/run/slurmd-$node.pid" || start_slurmd_in "$node"  # its own address: no port to share
  done
fi
# idle, or busy with jobs (mix/alloc) on a warm cluster; down/drain/inval/"*" (not responding) fail
node_states() { sinfo -h -N -p "$PARTITION" -o '%N %t' | sort -u; }
nodes_usable() { [ "$(node_states | grep -Ec ' (idle|mix|alloc)$')" = "$NODES" ]; }
if ! wait_for 10 "$NODES node(s) in partition $PARTITION to be idle" nodes_usable; then
  # state saved by an earlier cluster (a killed machine, a test that downed a node) can keep a node
  # down or drained across restarts; this cluster is ours alone, so bring it back
  bad=$(node_states | grep -Ev ' (idle|mix|alloc)$' | awk '{print $1}' | paste -sd, -)
  log "node(s) ${bad:-?} are $(node_states | grep -Ev ' (idle|mix|alloc)$' | awk '{print $2}' | sort -u | paste -sd, -): scontrol update State=RESUME"
  if [ -n "$bad" ]; then scontrol update NodeName="$bad" State=RESUME >/dev/null 2>&1 || true; fi
  if ! wait_for 60 "$NODES node(s) in partition $PARTITION to be idle" nodes_usable; then
    show_logs
    die "Slurm nodes are not idle (SLURM_CONF=$CONF)"
  fi
fi
log "cluster up in $(el)s: $NODES node(s), partition=$PARTITION SLURM_CONF=$CONF"
sinfo -p "$PARTITION"
echo "use it from a shell: source $ROOT/env.sh"
