#!/usr/bin/env bash
# The GPU checks of issues 12 and 14, in one go (about 8 minutes on an H100/H200 with 16 cores):
#
#   0. The CUDA paths end to end on a tiny model: train.py with --precision auto (bf16),
#      fp16 (GradScaler), --lora, --resume, then evaluate.py.
#   1. --plan's peak_mb against the peak the same run reports (torch.cuda.max_memory_allocated):
#      gpt2 and gpt2-medium shapes, micro-batch 1 and 4, fp16 and bf16, with and without
#      --checkpointing, block 1024 (benchmarks/plan_check.py, several at once on the GPU:
#      each process's peak is its own). gpt2-xl with LoRA (+ checkpointing) beside them.
#   2. Speed, alone on the GPU (benchmarks/bench.py): each side's default against the
#      Trainer's, both fp16, and the chunked loss against the plain one (is it slower?).
#   3. The README's main command, timed (random GPT-2 124M weights: nothing is downloaded).
#   C. In the background, pinned to two cores (taskset -c 0,1, 2 threads): the CPU rows of
#      issue 12 (benchmarks/cpu_suite.py speed256 and mem1024), on this machine's CPU, which
#      may have native bf16 where the development machine has not. The GPU work runs on the
#      other cores.
#
# Run from the repository root:  bash benchmarks/gpu_check.sh   (results in $OUT, or
# ./gpu_results: gpu_check.log and results.tgz with one JSON per measurement). Installs
# nothing: it needs torch with CUDA, and transformers (the Trainer baseline, the tiny model).
# Every step has its own time limit, so one failure or hang does not cost the others.
# A dry run of the plumbing on a machine without a GPU: DRY=1 bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT/r" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
T0=$(date +%s)
section() { echo; echo "== [$(( $(date +%s) - T0 )) s] $*"; }
R=$OUT/r
if [ -n "${DRY:-}" ]; then  # the same steps, small and on the CPU
    DEV=cpu; BLOCK=32; SHAPES="gpt2"; BIG=gpt2; MBS="1"; PRECS="fp32"; STEPS=2; CPU_GROUPS=""; GPU=""
else
    DEV=cuda; BLOCK=1024; SHAPES="gpt2 gpt2-medium"; BIG=gpt2-xl; MBS="1 4"; PRECS="fp16 bf16"; STEPS=3
    CPU_GROUPS="speed256:defaults,fp32,bf16 mem1024:defaults"; GPU="taskset -c 2-$(( $(nproc) - 1 ))"
fi

section environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
lscpu | grep -E "^(Model name|CPU\(s\)|Thread)" || true
grep -o -w -E "avx512_bf16|amx_bf16|amx_tile|avx512f" /proc/cpuinfo | sort | uniq -c || true
python3 - <<'EOF'
import sys, torch
from gpt2.precision import cpu_has_native_bf16
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available:", torch.cuda.is_available(), "| cpu capability:", torch.backends.cpu.get_cpu_capability(),
      "| native cpu bf16:", cpu_has_native_bf16())
for name in ("numpy", "tqdm", "tokenizers", "safetensors", "transformers", "peft"):
    try:
        m = __import__(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except ImportError:
        print(f"{name}: MISSING")
EOF

command -v taskset > /dev/null || { echo "!! no taskset: no CPU rows, no pinning"; CPU_GROUPS=""; GPU=""; }
# C. The CPU rows, in the background, each group on two cores of its own, for the whole script.
CPU_JOBS=""
core=0
for g in $CPU_GROUPS; do
    OMP_NUM_THREADS=2 timeout 420 taskset -c $core,$((core + 1)) python3 benchmarks/cpu_suite.py "${g%%:*}" \
        --only "${g#*:}" --rounds 1 --out "$R" > "$R/cpu_${g%%:*}.log" 2>&1 &
    CPU_JOBS="$CPU_JOBS $!"
    core=$((core + 2))
done
[ -n "$CPU_JOBS" ] && GPU="taskset -c $core-$(( $(nproc) - 1 ))"

section "0. CUDA paths end to end, tiny model"
W=/tmp/gpu_check; rm -rf $W; mkdir -p $W
python3 - "$W" <<'EOF'
import sys
sys.path.insert(0, "tests")
from conftest import TINY, hf_model, save_hf, write_text
w = sys.argv[1]
save_hf(hf_model(**TINY), f"{w}/tiny")
write_text(f"{w}/train.txt", 2000)
write_text(f"{w}/val.txt", 300, seed=1)
EOF
E2E="--model $W/tiny --train-file $W/train.txt --validation-file $W/val.txt --block-size 64 --device $DEV --no-progress"
t() { echo "\$ $*"; timeout 60 "$@" 2>&1 | tail -n 6; echo "(exit ${PIPESTATUS[0]})"; }
t python3 train.py $E2E --epochs 1 --out $W/auto
grep -q '"eval_loss"' $W/auto/all_results.json 2>/dev/null || { echo "!! train.py fails on $DEV: stopping here"; exit 1; }
t python3 train.py $E2E --precision fp16 --max-steps 8 --out $W/fp16
echo "\$ (Ctrl-C after 12 s, then --resume, fp16)"
timeout -s INT 12 python3 train.py $E2E --precision fp16 --epochs 200 --log-every 100 --out $W/int 2>&1 | tail -n 3
ls $W/int
echo "\$ (--resume, Ctrl-C again after 12 s)"
timeout -s INT 12 python3 train.py $E2E --precision fp16 --epochs 200 --log-every 100 --resume --out $W/int 2>&1 \
    | grep -v "^  " | head -n 12
t python3 train.py $E2E --lora 4 --precision fp16 --max-steps 8 --out $W/lora
t python3 evaluate.py $W/fp16 --device $DEV
t python3 evaluate.py $W/lora --device $DEV
echo "\$ train.py --plan --model gpt2-medium --device $DEV --block-size 1024 --batch-size 4 --checkpointing"
timeout 60 python3 train.py --plan --model gpt2-medium --device $DEV --block-size 1024 --batch-size 4 --checkpointing

section "1. --plan against the measured peak, block $BLOCK, $STEPS steps per run (several processes at once)"
plan() {  # plan NAME LIMIT ARGS...
    local name=$1 limit=$2; shift 2
    OMP_NUM_THREADS=2 timeout "$limit" $GPU python3 benchmarks/plan_check.py --device $DEV --block-size $BLOCK \
        --steps $STEPS --json "$R/plan_$name.json" "$@" > "$R/plan_$name.log" 2>&1 || echo "!! plan $name: exit $?"
}
# The big shape runs beside both waves (planned: 7, 13 and 24 GB); one shape's wave at a time.
plan "${BIG}_bf16_b1" 300 --model $BIG --precision bf16 --batch-size 1 --runs lora_ckpt,lora,ckpt &
BIG_JOB=$!
for shape in $SHAPES; do
    WAVE=""
    for prec in $PRECS; do
        for mb in $MBS; do
            runs=default,ckpt
            [ "$shape" = gpt2-medium ] && [ "$mb" = 1 ] && runs=default,ckpt,lora
            plan "${shape}_${prec}_b$mb" 150 --model $shape --precision $prec --batch-size $mb --runs $runs &
            WAVE="$WAVE $!"
        done
    done
    wait $WAVE
done
wait $BIG_JOB
for f in "$R"/plan_*.log; do echo "-- $(basename "$f")"; sed -n '/^$/,$p' "$f" | tail -n 12; done

section "2. Speed, block $BLOCK, micro-batch 2 unless said (the GPU to itself)"
bench() {  # bench NAME LIMIT ARGS...
    local name=$1 limit=$2; shift 2
    echo "-- $name"
    timeout "$limit" $GPU python3 benchmarks/bench.py --device $DEV --model-config gpt2 --block-size $BLOCK \
        --batch-size 2 --steps 10 --warmup 3 --eval-batches 0 --json "$R/speed_$name.json" "$@" 2>&1 \
        | grep -v -E "^\s*$" | tail -n 14 || echo "!! $name: exit $?"
}
bench defaults 80 --side ours,trainer --ours-opts default --ours-precision default --hf-precision default
bench fp16 80 --side ours,trainer --ours-opts default --precision fp16
for prec in bf16 fp16; do
    for mb in 2 8; do
        [ $prec = fp16 ] && [ $mb = 8 ] && continue
        bench "ours_${prec}_b${mb}_plain" 40 --side ours --ours-opts chunk=0 --precision $prec --batch-size $mb
        bench "ours_${prec}_b${mb}_chunk" 40 --side ours --ours-opts chunk=1024 --precision $prec --batch-size $mb
    done
done

section "3. The README's main command (random GPT-2 124M weights)"
if [ -z "${DRY:-}" ]; then
    python3 -c 'import torch; from gpt2.config import PRESETS; from gpt2.model import GPT2; from gpt2.weights import save_checkpoint; torch.manual_seed(0); save_checkpoint(GPT2(PRESETS["gpt2"]), "weights/gpt2")'
    ( time timeout 80 $GPU python3 train.py --lr 1e-4 --epochs 3 --no-progress --log-every 50 --out /tmp/ckpt_main ) 2>&1 | tail -n 30
fi

section "C. CPU rows (waiting for the background job)"
[ -n "$CPU_JOBS" ] && wait $CPU_JOBS
for f in "$R"/cpu_*.log; do [ -f "$f" ] && { echo "-- $(basename "$f")"; sed -n '/medians over the rounds/,$p' "$f"; tail -n 3 "$f"; }; done
tar czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
section "done: $OUT/gpu_check.log, $OUT/results.tgz"
