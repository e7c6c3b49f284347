#!/usr/bin/env bash
# The GPU half of issue #5, in one go (about 6 minutes on an H100/H200):
#
#   1. GPT-2 124M, block 1024, fp16 AMP, micro-batch 2: ours (chunked loss) vs
#      transformers' GPT2LMHeadModel: tokens/s, peak memory, eval samples/s.
#      Also ours with no option at all.
#   2. Ours at micro-batch 8 (chunked loss + activation checkpointing) vs
#      transformers at micro-batch 2: peak memory ("4x the micro-batch in the
#      same memory").
#   3. Ours with torch.compile, bf16, chunked loss, the largest micro-batch that
#      fits (--ours-batch-size auto): tokens/s and MFU.
#
# Run from the repository root:  bash benchmarks/gpu_check.sh   (results in $OUT, or
# ./gpu_results). Installs nothing: it needs torch with CUDA, numpy, tqdm, and
# transformers for the baseline (without it, only our side runs and it says so).
# Each step has its own time limit, so one failure or hang does not cost the others.
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
for name in ("numpy", "tqdm", "tokenizers", "safetensors", "transformers"):
    try:
        m = __import__(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except ImportError:
        print(f"{name}: MISSING")
EOF
if python -c 'import transformers' 2>/dev/null; then
    SIDE=both
else
    SIDE=ours
    echo "!! transformers is not installed: only our side runs (no baseline, no ratios)."
    echo "!! carry wheels for: transformers (+ its deps huggingface_hub, tokenizers, safetensors, regex, pyyaml, packaging)"
fi

# DEVICE=cpu MODEL=tiny BLOCK=64 bash benchmarks/gpu_check.sh: a dry run of the script itself.
BENCH="python benchmarks/bench.py --device ${DEVICE:-cuda} --model-config ${MODEL:-gpt2} --block-size ${BLOCK:-1024}"
run() {  # run NAME LIMIT_S ARGS...: one benchmark, its table in the log, its JSON in $OUT
    local name=$1 limit=$2; shift 2
    echo; echo "== $name"
    timeout "$limit" $BENCH "$@" --json "$OUT/$name.json" || echo "!! $name: exit status $?"
}

# 1. Same micro-batch, fp16: the speed and memory of each side.
run fp16_b2_chunk 100 --precision fp16 --batch-size 2 --side $SIDE --ours-opts chunk=1024 \
    --steps 10 --warmup 3 --eval-batches 4 --eval-batch-size 8
# 2. Four times the micro-batch: ours at 8 against transformers at 2.
run fp16_b8_vs_hf_b2 80 --precision fp16 --batch-size 2 --ours-batch-size 8 --side $SIDE \
    --ours-opts chunk=1024,checkpointing --steps 5 --warmup 2 --eval-batches 0
# The README's main command, timed (random GPT-2 124M weights: nothing can be downloaded here).
echo; echo "== python train.py --lr 1e-4 --epochs 3"
python -c 'import torch; from gpt2.config import PRESETS; from gpt2.model import GPT2; from gpt2.weights import save_checkpoint; torch.manual_seed(0); save_checkpoint(GPT2(PRESETS["gpt2"]), "weights/gpt2")'
( time timeout 100 python train.py --lr 1e-4 --epochs 3 --no-progress --log-every 50 --out /tmp/ckpt_main ) 2>&1 | tail -32
# 3. Speed: compiled, bf16, the largest micro-batch that fits; MFU at --peak-tflops 989.
run bf16_compile_auto 150 --precision bf16 --ours-batch-size auto --side ours \
    --ours-opts chunk=4096,compile --steps 10 --warmup 3 --eval-batches 0 --peak-tflops 989

# 4. Without the chunked loss, for comparison.
run fp16_b2_plain 70 --precision fp16 --batch-size 2 --side $SIDE --ours-opts "" \
    --steps 10 --warmup 3 --eval-batches 0

echo; echo "== summary"
python - "$OUT" <<'EOF'
import glob, json, os, sys

out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    r = json.load(open(path))
    o, h = r.get("ours") or {}, r.get("hf") or {}
    def g(d, k, f="{:,.0f}"):
        return f.format(d[k]) if d.get(k) is not None else "-"
    rt = r["ratios"]
    rows.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
        os.path.basename(path)[:-5], o.get("precision", "-"), o.get("opts", "-"),
        o.get("batch_size", "-"), h.get("batch_size", "-"),
        g(o, "train_tokens_per_s"), g(h, "train_tokens_per_s"),
        g(o, "peak_train_mb"), g(h, "peak_train_mb"),
        "{:.2f}x / {:.2f}x".format(rt["train_tokens_per_s"], rt["peak_train_mb"]) if rt["train_tokens_per_s"] else "-",
        g(o, "mfu", "{:.1%}")))
head = ("| run | precision | ours: options | ours: micro-batch | hf: micro-batch | ours tok/s | hf tok/s "
        "| ours peak MB | hf peak MB | ratio tok/s / mem | ours MFU |\n|" + "---|" * 11)
md = head + "\n" + "\n".join(rows) + "\n"
print(md)
open(os.path.join(out, "summary.md"), "w").write(md)
EOF
echo "results: $OUT/ (summary.md, one JSON per run, gpu_check.log)"
