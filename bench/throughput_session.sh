#!/usr/bin/env bash
# Issue #22 on ONE card (kind nvidia-h200), each part one device call of at most ~9 minutes:
#   bash bench/throughput_session.sh sweep     the study's first look (10 trials: 5 variants x 2 seeds, 400 steps of
#                                              32x1024 tokens) through `gatesweep run` beside its first trial alone,
#                                              after `gatesweep warmup` (bench/sweep_throughput.py); needs
#                                              .gpu/data/offline_*.bin (the real-text shards)
#   bash bench/throughput_session.sh targets   the trainer's targets: our graph families compiled at once, the
#                                              reference alone (cold), then ours one at a time (bench/run.py --plan
#                                              targets, 64x1024 tokens, 80 steps); needs the reference script
#                                              ($REF, default .ref/train_gpt2.py)
# Outputs in $OUT; file them with
#   python3 bench/summary.py <targets OUT> --name h200-targets --sweep <sweep OUT>
# BENCH_DRY_RUN=1 prints what would run, without a GPU.
set -u
cd "$(dirname "$0")/.."
part=${1:?usage: bash bench/throughput_session.sh sweep|targets}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export GATESWEEP_GIT_SHA=${GATESWEEP_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export BENCH_WORK=${BENCH_WORK:-/tmp/gatesweep-bench}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG=$OUT/session.log
CALL_S=${CALL_S:-545}  # the command's own limit is 600 s: leave room for the tail and the copy back
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; date -u; echo "sha $GATESWEEP_GIT_SHA"
} >>"$LOG" 2>&1
case $part in
  sweep)
    ls .gpu/data/offline_train_*.bin >/dev/null 2>&1 || { echo "no .gpu/data/offline_*.bin" | tee -a "$LOG"; exit 2; }
    timeout $(( CALL_S - $(el) )) python3 bench/sweep_throughput.py --spec sweeps/offline_stage1_v2.yaml --looks 1 \
      --out "$OUT" --budget $(( CALL_S - 15 - $(el) )) ${BENCH_DRY_RUN:+--dry-run} >>"$LOG" 2>&1 ;;
  targets)
    REF=${REF:-.ref/train_gpt2.py}
    [ -f "$REF" ] || { echo "no reference script at $REF" | tee -a "$LOG"; exit 2; }
    # 80 steps: the first ~15 timed steps of a fresh process run ~7% slow (2026-12-04: 40 were too few)
    timeout $(( CALL_S - $(el) )) python3 bench/run.py --plan ${PLAN:-targets} --steps ${STEPS:-80} --lanes 0 --ref "$REF" \
      --budget $(( CALL_S - 30 - $(el) )) --out "$OUT" ${BENCH_DRY_RUN:+--dry-run} >>"$LOG" 2>&1 ;;
  *) echo "unknown part $part (sweep|targets)"; exit 2 ;;
esac
echo "[$(el)s] $part exit $?" >>"$LOG"
tail -n 40 "$LOG"
