#!/usr/bin/env bash
# Issue 12's CPU rows on a machine with many cores: every variant at once, each pinned to
# two cores of its own (taskset, 2 threads), GPT-2 124M shape, block 256, micro-batch 2.
# Run at the same time, the variants share the machine's memory bandwidth and caches
# alike, so compare them with each other, not with a run on an idle machine.
#
#   bash benchmarks/cpu_pairs.sh            (16 cores or more; results in $OUT or ./cpu_pairs)
set -u
OUT=${OUT:-cpu_pairs}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
COMMON="--device cpu --model-config gpt2 --batch-size 2 --block-size 256 --eval-batches 0 --steps 6 --warmup 1"
core=0
pair() {  # pair NAME ARGS...: one bench.py run on the next two cores, in the background
    local name=$1; shift
    OMP_NUM_THREADS=2 timeout "${LIMIT:-170}" taskset -c $core,$((core + 1)) python3 benchmarks/bench.py $COMMON "$@" \
        --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1 &
    core=$((core + 2))
}
pair defaults --side ours,trainer --ours-opts default --ours-precision default --hf-precision default --rounds 2
pair fp32 --side ours,trainer --ours-opts default --precision fp32 --rounds 2
pair bf16 --side ours,trainer --ours-opts default --precision bf16 --rounds 2
pair ours_bf16_chunk --side ours --ours-opts chunk=1024,recompute=0 --precision bf16 --rounds 3
pair ours_bf16_plain --side ours --ours-opts chunk=0,recompute=0 --precision bf16 --rounds 3
pair ours_fp32_chunk --side ours --ours-opts chunk=1024,recompute=0 --precision fp32 --rounds 3
pair hf_loop_bf16 --side hf --precision bf16 --rounds 3
pair ours_bf16_compile --side ours --ours-opts default,compile --precision bf16 --warmup 2
wait
for f in "$OUT"/*.log; do echo "== $(basename "$f" .log)"; grep -E "^(ours|precision|train tokens|peak resident|step time)" "$f"; done
