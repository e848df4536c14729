#!/usr/bin/env bash
# One device call, several measurements (the device lease is short; see bench/README.md):
#   1. the offline-corpus stage-1 study through `gatesweep run` (local backend, both GPUs) and,
#      beside it, the reference script on the same data and steps (parity);
#   2. the remaining gate variants vs our baseline (step time, start-up);
#   3. DDP scaling 1 -> 2 GPUs at the fixed global batch.
# Outputs go to $OUT (at most 8 files): study.tgz, ref_parity_log.txt, bench_variants.json,
# bench_scaling.json, session.log.
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export GATESWEEP_GIT_SHA=${GATESWEEP_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export GATESWEEP_COMPILE_CACHE=/tmp/gs-compile-cache BENCH_WORK=/tmp/gatesweep-bench
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG=$OUT/session.log
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; date -u; } >>"$LOG" 2>&1

echo "[$(el)s] phase 1: study + reference parity" | tee -a "$LOG"
timeout 420 python3 bench/run.py --plan parity --lanes 1 --out /tmp/parity >>"$LOG" 2>&1 &
PARITY=$!
timeout 400 python3 -m gatesweep run sweeps/offline_stage1.yaml --backend local >>"$LOG" 2>&1
echo "[$(el)s] study exit $?" | tee -a "$LOG"
wait $PARITY; echo "[$(el)s] parity exit $?" | tee -a "$LOG"
cp /tmp/gatesweep-bench/runs/ref-parity/logs/*.txt "$OUT/ref_parity_log.txt" 2>/dev/null
tar czf "$OUT/study.tgz" --exclude=checkpoints runs experiments 2>>"$LOG"

if [ "$(el)" -lt 330 ]; then
  echo "[$(el)s] phase 2: gate variants" | tee -a "$LOG"
  timeout $(( 540 - $(el) )) python3 bench/run.py --plan variants --steps 60 \
    --ours '{"fused_proj": true, "ce_chunks": 8, "muon_batched": true}' --out /tmp/variants >>"$LOG" 2>&1
  cp /tmp/variants/results.json "$OUT/bench_variants.json" 2>/dev/null
fi
if [ "$(el)" -lt 470 ]; then
  echo "[$(el)s] phase 3: DDP scaling" | tee -a "$LOG"
  timeout $(( 575 - $(el) )) python3 bench/run.py --plan scaling --steps 30 \
    --ours '{"fused_proj": true, "ce_chunks": 8, "muon_batched": true}' --out /tmp/scaling >>"$LOG" 2>&1
  cp /tmp/scaling/results.json "$OUT/bench_scaling.json" 2>/dev/null
fi
echo "[$(el)s] done" | tee -a "$LOG"
grep -E "^\[|exit=|sweep offline|done [0-9]+/" "$LOG" | tail -40
