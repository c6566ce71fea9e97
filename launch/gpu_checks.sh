#!/usr/bin/env bash
# Every GPU check of verl-reweight in one run, on one CUDA machine with the GPU install (docs/gpu.md):
#
#   bash launch/gpu_checks.sh [OUT_DIR]        # ~10 min on one H100/H200; logs and a summary in OUT_DIR
#
# 1. the doctor on this node for the smoke config (CUDA, driver, NCCL, versions, flash-attn or sdpa, memory);
# 2. the GPU-marked tests: loss (eager/compiled, bf16/fp32 vs float64), analysis, decoder, the smoke run
#    (configs/gpu_smoke.yaml: vLLM rollout, CUDA FSDP2, 2 DAPO steps with our loss);
# 3. the GPU benchmarks, whose ratios go in docs/gpu.md with the device they name:
#    bench_loss.py (reweight / vanilla, target <= 1.00 compiled) and bench_analysis.py at a Qwen-sized
#    vocabulary (chunked / plain throughput, target >= 0.8).
# Every step runs even if an earlier one fails; the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-checks-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export REWEIGHT_CACHE=${REWEIGHT_CACHE:-$OUT/cache}
failed=0

step() {  # step NAME TIMEOUT_S COMMAND...: run it, log to OUT/NAME.log, one summary line
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    echo "$name rc=$rc $((SECONDS - start))s: $*" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/device.txt" 2>&1
step doctor 300 reweight-launch doctor --config-name gpu_smoke
step gpu_tests 1500 python -m pytest -n 0 -m gpu -p no:cacheprovider -rs tests/
step bench_loss 600 python tests/benchmarks/bench_loss.py --device cuda --dtype bfloat16
step bench_analysis 900 python tests/benchmarks/bench_analysis.py --device cuda --dtype bfloat16 \
    --hidden 2048 --layers 8 --heads 16 --vocab 151936 --seq 4096 --batch 4
tail -n 4 "$OUT/bench_loss.log" >> "$OUT/summary.txt"
grep -E '"(chunked_over_plain|chunked_eager_over_plain|device)"' "$OUT/bench_analysis.log" >> "$OUT/summary.txt"
echo "failed steps: $failed (logs in $OUT)" | tee -a "$OUT/summary.txt"
exit "$failed"
