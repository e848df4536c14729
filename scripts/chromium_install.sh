#!/usr/bin/env bash
# Install Debian's `chromium` (headless UI checks of the MLflow server) unless it is present.
# Idempotent; quiet apt; prints how long it took.
set -euo pipefail
T0=$(date +%s.%N)
el() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
if [ -x /usr/bin/chromium ]; then
  echo "[chromium_install] present: $(/usr/bin/chromium --version 2>/dev/null | tail -n 1)"
  exit 0
fi
log=$(mktemp /tmp/gatesweep-chromium-apt.XXXXXX.log)
echo "[chromium_install] apt-get install chromium"
# one apt at a time across our scripts (slurm_up.sh may be installing too)
if ! flock /tmp/gatesweep-apt.lock bash -c '
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq &&
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium' >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "[chromium_install] ERROR: apt-get install chromium failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
echo "[chromium_install] installed $(/usr/bin/chromium --version 2>/dev/null | tail -n 1) in $(el)s"
