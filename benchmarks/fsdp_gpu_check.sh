#!/usr/bin/env bash
# The GPU checks of issue 27 (sharded training), on one GPU (about 6 minutes on an H100, 30 GB of RAM):
#
#   1. The CUDA paths of --offload on a tiny model, fp32: one process, and torchrun with one
#      process, against the same run without offload (the weights must agree within 1e-5).
#   2. gpt2-xl (random weights: nothing is downloaded; 6.2 GB written to weights/gpt2-xl-random)
#      fully fine-tuned with --offload, bf16, micro-batch 1 x 1024, --checkpointing, the chunked
#      loss: the GPU's peak (train_peak_memory_mb), tokens/s and the host's peak (GNU time),
#      against --plan's FSDP+offload row; then the same without --offload (it fits an 80 GB GPU):
#      what offload costs in speed. The figures go to docs/performance.md.
#
# Run from the repository root:  bash benchmarks/fsdp_gpu_check.sh   (log in $OUT, or ./fsdp_results)
# A dry run of the plumbing on a machine without a GPU (tiny shapes, the CPU): DRY=1 bash benchmarks/fsdp_gpu_check.sh
set -u
OUT=${OUT:-fsdp_results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
exec > >(tee "$OUT/fsdp_gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
T0=$(date +%s)
section() { echo; echo "== [$(( $(date +%s) - T0 )) s] $*"; }
if [ -n "${DRY:-}" ]; then
    DEV=cpu; BIG=gpt2; BLOCK=64; STEPS=2; LIMIT=300
else
    DEV=cuda; BIG=gpt2-xl; BLOCK=1024; STEPS=6; LIMIT=900
fi
TIME=$(command -v /usr/bin/time >/dev/null && echo "/usr/bin/time -f host_peak_rss_kb=%M" || echo "")

section environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
free -g | head -2
python3 -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "| available:", torch.cuda.is_available())'

section "1. --offload on a tiny model, fp32 ($DEV)"
TINY=$OUT/tiny
python3 - "$TINY" <<'EOF'
import sys, torch
from gpt2.config import GPT2Config
from gpt2.model import GPT2
from gpt2.weights import save_checkpoint
torch.manual_seed(0)
save_checkpoint(GPT2(GPT2Config(n_positions=64, n_embd=64, n_layer=2, n_head=4)), sys.argv[1])
EOF
python3 -c 'import random; random.seed(0); w="the model reads text and learns which token comes next".split(); open("'"$OUT"'/text.txt","w").write("\n".join(" ".join(random.choices(w, k=40)) for _ in range(200)))'
TA=(--model "$TINY" --train-file "$OUT/text.txt" --block-size 64 --batch-size 2 --grad-accum 2 --max-steps 6
    --lr 1e-3 --dropout 0 --precision fp32 --device "$DEV" --no-progress --log-every 1 --cache-dir "$OUT/cache")
timeout 300 python3 train.py "${TA[@]}" --out "$OUT/tiny_plain" | tail -n 3
timeout 300 python3 train.py "${TA[@]}" --offload --out "$OUT/tiny_offload" | tail -n 3
timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node=1 train.py "${TA[@]}" --fsdp --offload \
    --out "$OUT/tiny_torchrun" | tail -n 3
python3 - "$OUT" <<'EOF'
import sys
from safetensors.torch import load_file
out = sys.argv[1]
a = load_file(f"{out}/tiny_plain/model.safetensors")
for other in ("tiny_offload", "tiny_torchrun"):
    b = load_file(f"{out}/{other}/model.safetensors")
    d = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"{other}: max |weight difference| against plain = {d:.3g}", "OK" if d <= 1e-5 else "DIFFERENT")
EOF

section "2. $BIG with --offload, bf16, 1 x $BLOCK, --checkpointing (random weights)"
W=weights/$BIG-random
[ -f "$W/model.safetensors" ] || python3 -c 'import sys, torch; from gpt2.config import PRESETS; from gpt2.model import GPT2; from gpt2.weights import save_checkpoint; torch.manual_seed(0); save_checkpoint(GPT2(PRESETS[sys.argv[1]]), sys.argv[2])' "$BIG" "$W"
BA=(--model "$W" --train-file "$OUT/text.txt" --block-size "$BLOCK" --batch-size 1 --grad-accum 1 --max-steps "$STEPS"
    --lr 1e-5 --device "$DEV" --no-progress --log-every 1 --checkpointing --loss-chunk 1024 --cache-dir "$OUT/cache"
    --max-train-samples 64)
[ "$DEV" = cuda ] && BA+=(--bf16)
python3 train.py "${BA[@]}" --plan --processes 1 --memory 80GB --out "$OUT/plan" | sed -n '/per GPU with/,$p'
for mode in offload plain; do
    flag=$([ $mode = offload ] && echo --offload)
    echo "-- $mode"
    ( $TIME timeout $LIMIT python3 train.py "${BA[@]}" $flag --out "$OUT/big_$mode" ) 2>&1 | \
        grep -E "train_peak_memory_mb|train_tokens_per_second|train_runtime|host_peak_rss_kb|error" || true
done
rm -rf "$OUT/cache"
section "done: $OUT/fsdp_gpu_check.log"
