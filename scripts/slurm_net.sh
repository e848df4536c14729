# Sourced by slurm_up.sh / slurm_down.sh: the test hosts of a multi-node cluster (SLURM_NODES >= 2).
#
# Each node is a Linux network namespace named after it (gsnode1, gsnode2, ...) with one veth on a
# bridge of its own ($PREFIX-br) and its own address ($NET.11, .12, ...); this machine is the login
# host on the bridge ($NET.1, "$PREFIX-login"): slurmctld, slurmdbd, the tests and their MLflow server
# live there. The names resolve on every node through one marked block in /etc/hosts (the namespaces
# share the filesystem). slurmd runs in its node's namespace under a UTS namespace with the node's
# hostname, so `hostname`, gloo's interface choice and MASTER_ADDR behave as on separate machines, and
# 127.0.0.1 on one node is not another node: code that assumes one host fails here as on a real cluster.
# Traffic stays on the bridge and in the namespaces this file creates; no route leads anywhere else.
# The default net is in 198.18.0.0/15 (RFC 2544: reserved for test hosts, never routed).

NODE_PREFIX=${SLURM_NODE_PREFIX:-gsnode}
NET=${SLURM_NET_PREFIX:-198.18.13}          # a /24: the login host is .1, node i is .(10+i)
BRIDGE=$NODE_PREFIX-br
LOGIN_HOST=$NODE_PREFIX-login
LOGIN_ADDR=$NET.1
HOSTS_LOCK=/tmp/gatesweep-hosts.lock

node_name() { echo "$NODE_PREFIX$1"; }        # node_name <i>: gsnode<i>
node_addr() { echo "$NET.$((10 + $1))"; }     # node_addr <i>
hosts_marker() { echo "# gatesweep test cluster $1"; }  # one block per SLURM_ROOT

# net_up <n>: bridge, n namespaces with a veth each, addresses, loopback up (idempotent)
net_up() {
  local n=$1 i node
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  # (captured, not piped into grep -q: under pipefail an early grep exit fails the pipe)
  [[ $(ip addr show dev "$BRIDGE") == *"inet $LOGIN_ADDR/"* ]] || ip addr add "$LOGIN_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq 1 "$n"); do
    node=$(node_name "$i")
    [ -e "/run/netns/$node" ] || ip netns add "$node"
    if ! ip link show "$node-h" >/dev/null 2>&1; then
      ip link add "$node-h" type veth peer name "$node-n"
      ip link set "$node-n" netns "$node"
    fi
    ip link set "$node-h" master "$BRIDGE"
    ip link set "$node-h" up
    ip -n "$node" link set lo up
    [[ $(ip -n "$node" addr show dev "$node-n") == *"inet $(node_addr "$i")/"* ]] ||
      ip -n "$node" addr add "$(node_addr "$i")/24" dev "$node-n"
    ip -n "$node" link set "$node-n" up
  done
}

# on_node <node> <cmd...>: run a command on a test host: in its network namespace, with its hostname.
# (nsenter, not `ip netns exec`: that one remounts /sys, and slurmd needs the cgroup mounts under it)
on_node() {
  local node=$1; shift
  nsenter --net="/run/netns/$node" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$node" "$@"
}

# our_namespaces: the namespaces of this prefix (also those of an earlier, larger cluster)
our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NODE_PREFIX}[0-9]+$" || true; }

# kill_node <node>: SIGKILL every process in the node's namespace (its slurmd, job steps, Ray, ...)
kill_node() {
  local pids
  pids=$(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')
  [ -n "${pids// }" ] && kill -9 $pids 2>/dev/null
  for _ in $(seq 1 50); do [ -z "$(ip netns pids "$1" 2>/dev/null)" ] && return 0; sleep 0.1; done
  return 0
}

net_down() {
  local node
  for node in $(our_namespaces); do
    kill_node "$node"
    ip link del "$node-h" 2>/dev/null || true   # deletes its peer in the namespace too
    ip netns del "$node" && echo "[slurm_down] removed network namespace $node"
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE" && echo "[slurm_down] removed bridge $BRIDGE"
  fi
}

# test_hosts_up <root> <n>: namespaces, bridge, /etc/hosts lines and per-node spool dirs of n nodes;
# nodes of an earlier, larger cluster go; net.env records what slurm_down.sh removes
test_hosts_up() {
  local root=$1 n=$2 ns i
  for ns in $(our_namespaces); do
    [ "${ns#"$NODE_PREFIX"}" -le "$n" ] || { kill_node "$ns"; ip link del "$ns-h" 2>/dev/null; ip netns del "$ns"; }
  done
  net_up "$n"
  hosts_write "$root" "$n"
  printf 'SLURM_NODE_PREFIX=%q\nSLURM_NET_PREFIX=%q\n' "$NODE_PREFIX" "$NET" > "$root/etc/net.env"
  for i in $(seq 1 "$n"); do mkdir -p "$root/spool/$(node_name "$i")"; done
}

# test_hosts_down <root>: every process left on the nodes, the namespaces, the bridge, the hosts lines
test_hosts_down() {
  [ -f "$1/etc/net.env" ] || return 0
  net_down
  hosts_remove "$1"
  rm -f "$1/etc/net.env"
}

# /etc/hosts: written in place (it may be a bind mount that a rename would not replace), under a lock
hosts_write() {  # hosts_write <root> <n>: replace this root's block with the login host and n nodes
  local root=$1 n=$2 i marker; marker=$(hosts_marker "$root")
  (
    flock 9
    grep -vF "$marker" /etc/hosts > "$root/run/hosts.new" || true
    echo "$LOGIN_ADDR $LOGIN_HOST $marker" >> "$root/run/hosts.new"
    for i in $(seq 1 "$n"); do echo "$(node_addr "$i") $(node_name "$i") $marker" >> "$root/run/hosts.new"; done
    cmp -s "$root/run/hosts.new" /etc/hosts || cat "$root/run/hosts.new" > /etc/hosts
    rm -f "$root/run/hosts.new"
  ) 9>"$HOSTS_LOCK"
}

hosts_remove() {  # hosts_remove <root>
  local marker; marker=$(hosts_marker "$1")
  grep -qF "$marker" /etc/hosts || return 0
  (
    flock 9
    local kept; kept=$(grep -vF "$marker" /etc/hosts || true)
    printf '%s\n' "$kept" > /etc/hosts
  ) 9>"$HOSTS_LOCK"
  echo "[slurm_down] removed the cluster's /etc/hosts lines"
}

# start_slurmd_in <node>: the node's slurmd (it daemonizes; its own address, so no port to share)
start_slurmd_in() { on_node "$1" /usr/sbin/slurmd -N "$1"; }
