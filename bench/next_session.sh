#!/usr/bin/env bash
# The GPU measurements of issue #17 on ONE card (kind nvidia-h200), one process at a time, each part
# one device call of at most 9 minutes:
#   bash bench/next_session.sh 1   the reference (cold) beside our defaults (cold, saving the portable
#                                  compile cache; warm = the second trial of a sweep), the headwise and
#                                  elementwise gates, headwise GEMM placements (gate_gemm), cd_tuning,
#                                  whole-model compile; 64 x 1024 tokens per step
#   bash bench/next_session.sh 2   const, headwise+ns_sigmoid, elementwise@value; the study config's step
#                                  time per variant (32 x 1024 tokens, .gpu/data/offline_*.bin); cudnn
#                                  attention, the plain path, a start from the portable cache alone,
#                                  max-autotune, whole-model compile + cd_tuning; Newton-Schulz batching
#                                  bitwise check on CUDA
# Jobs run in priority order; one whose estimate no longer fits the budget is skipped and listed.
# Needs .ref/train_gpt2.py (part 1) and .gpu/data/offline_*.bin (part 2): carry [".ref", ".gpu"].
# Outputs in $OUT: results.json, table.md, session.log (+ ns_check.json in part 2). File them with
#   python3 bench/summary.py <call1 files> <call2 files> --name h200-single
# BENCH_DRY_RUN=1 prints the plan (commands, estimates, what the budget skips) without a GPU.
set -u
cd "$(dirname "$0")/.."
part=${1:?usage: bash bench/next_session.sh 1|2}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export GATESWEEP_GIT_SHA=${GATESWEEP_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export BENCH_WORK=/tmp/gatesweep-bench
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG=$OUT/session.log
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; date -u; echo "sha $GATESWEEP_GIT_SHA"
} >>"$LOG" 2>&1
if [ "$part" = 1 ] && [ ! -f .ref/train_gpt2.py ]; then echo "no .ref/train_gpt2.py: carry .ref" | tee -a "$LOG"; exit 2; fi
if [ "$part" = 2 ]; then
  ls .gpu/data/offline_train_*.bin >/dev/null 2>&1 || echo "no .gpu/data/offline_*.bin: study jobs will fail" >>"$LOG"
  [ -n "${BENCH_DRY_RUN:-}" ] || timeout 60 python3 bench/fidelity.py --ns-check --out "$OUT" >>"$LOG" 2>&1
  echo "[$(el)s] ns-check exit $?" >>"$LOG"
fi
# 540 s per call: what is left after start-up, less ~25 s for data, the matmul peak and the tail
timeout $(( 535 - $(el) )) python3 bench/run.py --plan "single$part" --steps 40 --lanes 0 \
  --budget $(( 505 - $(el) )) --out "$OUT" ${BENCH_DRY_RUN:+--dry-run} >>"$LOG" 2>&1
echo "[$(el)s] part $part exit $?" >>"$LOG"
tail -n 45 "$LOG"
