# Sourced by the service scripts. A PID file can outlive its process (a machine restart, a
# killed container) and its pid can then belong to some other process: trusting `kill -0` alone
# makes *_up skip starting a daemon that is not there, and *_down kill a stranger. So a PID file
# counts only while its pid runs the named program.

# pid_running <pidfile> <name>: true when the file names a live process whose program name
# (/proc/PID/comm: the executable's or script's file name) is exactly <name>, e.g. slurmd (so a
# reused pid now running slurmdbd does not count), mariadbd, mlflow
pid_running() {
  local f=$1 name=$2 pid comm
  [ -s "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "$name" ]
}
