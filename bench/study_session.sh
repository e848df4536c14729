#!/usr/bin/env bash
# One device call of the real-text study round 2 (sweeps/offline_stage1_v2.yaml) on one GPU:
#   1. `gatesweep run ... --looks 1`: the next look of the sequential design (trials share the GPU,
#      so their own ms/step are not speed figures), stopping cleanly between looks;
#   2. with the time left (STEPTIMES=1), unshared step times of the five variants at the study config
#      (bench plan `study`, one process at a time, sharing the sweep's compile cache);
#   3. the records (no checkpoints) for `gatesweep sync` at home.
# Needs .gpu/data/offline_*.bin (carry .gpu); an earlier call's records travel in .gpu/runs (carry them
# back in: tar xzf records.tgz -C .gpu). Outputs in $OUT: steptimes.json, records.tgz, session.log.
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export BENCH_WORK=/tmp/gatesweep-bench GATESWEEP_COMPILE_CACHE=/tmp/gatesweep-bench/cache/study
export GATESWEEP_GIT_SHA=${GATESWEEP_GIT_SHA:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; LOG=$OUT/session.log
STEPTIMES=${STEPTIMES:-1}
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; date -u; echo "sha $GATESWEEP_GIT_SHA"; } >>"$LOG" 2>&1
if [ -d .gpu/runs ]; then mkdir -p runs experiments; cp -r .gpu/runs/. runs/; cp -r .gpu/experiments/. experiments/ 2>/dev/null; fi
timeout $(( ${CALL_S:-560} - $(el) )) python3 -m gatesweep run sweeps/offline_stage1_v2.yaml --backend local --looks 1 >>"$LOG" 2>&1
echo "[$(el)s] sweep exit $?" | tee -a "$LOG"
if [ "$STEPTIMES" = 1 ]; then
  timeout $(( ${CALL_S:-560} + 20 - $(el) )) python3 bench/run.py --plan study --steps 40 --lanes 0 --out /tmp/steptimes >>"$LOG" 2>&1
  echo "[$(el)s] step times exit $?" | tee -a "$LOG"
  cp /tmp/steptimes/results.json "$OUT/steptimes.json" 2>/dev/null
fi
tar czf "$OUT/records.tgz" --exclude=checkpoints --exclude=.compile-cache runs experiments 2>>"$LOG"
grep -E "^\[|exit=|look|decided|undecided|open|finished|sweep " "$LOG" | tail -40
