#!/usr/bin/env bash
# The GPU measurements still missing from bench/results (issue: GPU performance), planned as two device
# calls on a 4-GPU kind (nvidia-h100-x4), each under the 10-minute call limit:
#   bash bench/next_session.sh 1   every gate variant (none cold/warm, headwise, elementwise, const,
#                                  headwise+ns_sigmoid, elementwise@value) and the reference cold/warm in
#                                  one run on lanes 0-1; the same-math speed options (cd_tuning,
#                                  compile_mode=model, sdpa_backend=cudnn, fused_proj off) on lanes 2-3
#   bash bench/next_session.sh 2   DDP scaling 1 -> 2 -> 4 GPUs at the fixed 512 x 1024-token global batch
# Needs the reference script in .ref/train_gpt2.py (git-ignored; carry it with the call: carry [".ref"]).
# Outputs go to $OUT: results JSON and tables per plan, and session.log.
set -u
cd "$(dirname "$0")/.."
phase=${1:?usage: bash bench/next_session.sh 1|2}
export GATESWEEP_GIT_SHA=${GATESWEEP_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export BENCH_WORK=/tmp/gatesweep-bench
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG=$OUT/session.log
OURS='{"fused_proj": true, "ce_chunks": 8, "muon_batched": true}'
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; date -u; } >>"$LOG" 2>&1
if [ "$phase" = 1 ]; then
  timeout 570 python3 bench/run.py --plan full --lanes 0,1 --steps 60 --ours "$OURS" --out "$OUT/full" >>"$LOG" 2>&1 &
  FULL=$!
  sleep 30  # both runs measure the card's matmul peak on GPU 0 first: not at the same time
  BENCH_WORK=/tmp/gatesweep-bench-abl timeout 570 python3 bench/run.py --plan ablations --lanes 2,3 --steps 60 \
    --ours "$OURS" --out "$OUT/ablations" >>"$LOG" 2>&1
  echo "ablations exit $?" >>"$LOG"
  wait $FULL; echo "full exit $?" >>"$LOG"
else
  timeout 570 python3 bench/run.py --plan scaling --lanes 0,1,2,3 --steps 30 --ours "$OURS" \
    --out "$OUT/scaling" >>"$LOG" 2>&1
  echo "scaling exit $?" >>"$LOG"
fi
tail -n 60 "$LOG"
