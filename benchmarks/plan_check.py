"""Measure: real training runs' peak memory against harness/plan.py's prediction.

    python benchmarks/plan_check.py                        # gpt2-medium, CPU, fp32, 1 x 256, four runs
    python benchmarks/plan_check.py --model gpt2 --runs default,lora --block-size 512 --batch-size 2
    python benchmarks/plan_check.py --device cuda --precision bf16 --batch-size 8 --block-size 1024

Not a test: it measures, it asserts nothing. A model of the chosen shape is built with
random weights (no download) and saved with weights.save_checkpoint, next to GPT-2's
tokenizer files (weights/gpt2/), in a temporary directory. Then, one after the other,
each run is a real `python train.py ... --max-steps N` in its own process, and its
reported `train_peak_memory_mb` (OUT/train_results.json) is set against the peak_mb
that `train.py --plan` predicts for the same command line (plan.settings_for: the
same defaults as train.py, e.g. the chunked loss and attention_recompute on the CPU):

    default   train.py's defaults
    plain     --loss-chunk 0
    chunk     --loss-chunk 1024
    ckpt      --checkpointing
    both      --loss-chunk 1024 --checkpointing
    lora      --lora 8
    keep      --attention-recompute false (attention's T x T tensors kept for backward)
    lora_ckpt --lora 8 --checkpointing
    recompute --attention-recompute true (the T x T part recomputed at any block size)
    lora_recompute  --lora 8 --attention-recompute true

With both default and lora, the ratio of their real peaks is printed too. --alloc
runs train.py after tuning glibc's malloc as bench.py's `alloc` option does (large
blocks from the heap, kept for reuse instead of mmap()ed and returned). On the CPU
the figure is the process's peak resident memory (ru_maxrss), on CUDA
torch.cuda.max_memory_allocated: see plan.py's docstring for what each counts.

    python benchmarks/plan_check.py --live --layers 4 --batch-size 4

--live checks the plan's tensors without the process around them (CPU, glibc only):
one training step of the preset's width with --layers blocks, in this process, and
after every operation the bytes malloc has handed out and not taken back (mallinfo2);
the largest, less the step's start (weights, AdamW), against the plan's peak less
the same. No baseline, nothing kept by malloc: only live tensors.
"""

import argparse
import dataclasses
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RUNS = {"default": [], "plain": ["--loss-chunk", "0"], "chunk": ["--loss-chunk", "1024"],
        "ckpt": ["--checkpointing"], "both": ["--loss-chunk", "1024", "--checkpointing"], "lora": ["--lora", "8"],
        "keep": ["--attention-recompute", "false"], "lora_ckpt": ["--lora", "8", "--checkpointing"],
        "recompute": ["--attention-recompute", "true"],
        "lora_recompute": ["--lora", "8", "--attention-recompute", "true"]}


def make_model_dir(name, directory, seed=0):
    """A checkpoint directory of the preset's shape with random weights, and GPT-2's tokenizer files."""
    import torch

    from gpt2.config import PRESETS
    from gpt2.model import GPT2
    from gpt2.weights import save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(GPT2(PRESETS[name]), directory)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(ROOT, "weights", "gpt2", f), directory)


def make_text(path, lines=600, seed=0):
    """Random lines of words from GPT-2's vocabulary: only its length matters here."""
    with open(os.path.join(ROOT, "weights", "gpt2", "vocab.json"), encoding="utf-8") as f:
        words = [w.lstrip("\u0120") for w in json.load(f) if w.lstrip("\u0120").isalpha()]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choice(words) for _ in range(14)) + "\n")


def train_argv(args, model_dir, text, out, flags):
    """The command-line flags of one run (without `python train.py`)."""
    return ["--model", model_dir, "--train-file", text, "--block-size", str(args.block_size),
            "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--precision", args.precision,
            "--device", args.device, "--no-progress", "--out", out,
            "--cache-dir", os.path.join(os.path.dirname(out), "cache"), *flags]


def predict(argv):
    """memory.plan for these train.py flags, resolved as `train.py --plan` resolves them."""
    import torch

    from harness import memory, plan
    from harness.cli import train_parser

    a = train_parser().parse_args(argv)
    cfg = plan.model_config(a.model)
    s, _ = plan.settings_for(a, cfg, torch.device(a.device))
    return memory.plan(cfg, s)


# --alloc: train.py run after glibc's malloc is tuned as bench.py's "alloc" option does it
# (large blocks from the heap, kept for reuse), to see what that does to the peaks.
ALLOC_BOOT = ("import ctypes, runpy, sys; libc = ctypes.CDLL('libc.so.6'); "
              "libc.mallopt(-3, 1 << 30); libc.mallopt(-1, 2**31 - 1); "
              "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def run_one(argv, alloc=False):
    """One real training run; (its train_peak_memory_mb, wall seconds), or (None, s) if it failed."""
    boot = ["-c", ALLOC_BOOT] if alloc else []
    cmd = [sys.executable, *boot, os.path.join(ROOT, "train.py"), *argv]
    out = argv[argv.index("--out") + 1]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(proc.stdout[-2000:] + proc.stderr[-3000:], file=sys.stderr)
        return None, time.time() - t0
    with open(os.path.join(out, "train_results.json"), encoding="utf-8") as f:
        return json.load(f)["train_peak_memory_mb"], time.time() - t0


@functools.cache
def _mallinfo2():
    """glibc's mallinfo2() (glibc 2.33 and newer), through ctypes."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2


def malloc_in_use() -> int:
    """Bytes glibc's malloc has handed out and not taken back: heap chunks in use + mmap()ed blocks."""
    m = _mallinfo2()()
    return m.uordblks + m.hblkhd


def live_peak(cfg, s):
    """Bytes in use above the start of a training step (its second), at its largest, op by op."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from gpt2.lora import add_lora
    from gpt2.model import GPT2
    from gpt2.trainer import param_groups

    in_use = malloc_in_use

    class Watch(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    torch.manual_seed(0)
    model = GPT2(cfg, checkpointing=s.checkpointing, loss_chunk=s.loss_chunk,
                 attention_recompute=s.attention_recompute).train()
    if s.lora_rank:
        add_lora(model, s.lora_rank, targets=s.lora_targets)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (s.micro_batch, s.block_size))

    def step():  # as trainer.py: no name keeps the logits
        model(ids, labels=ids)[1].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step makes AdamW's state
    start, watch = in_use(), Watch()
    with watch:
        step()
    return watch.peak - start


def live_main(args):
    import torch

    from harness import memory, plan
    from harness.cli import train_parser
    from gpt2.config import PRESETS

    cfg = PRESETS[args.model]
    cfg = dataclasses.replace(cfg, n_layer=args.layers) if args.layers else cfg
    print(f"{args.model} width, {cfg.n_layer} blocks, micro-batch {args.batch_size} x {args.block_size}, fp32 on "
          f"the CPU: the largest bytes in use above the step's start, MB")
    for name in args.runs.split(","):
        a = train_parser().parse_args(["--precision", "fp32", "--device", "cpu", "--block-size", str(args.block_size),
                                       "--batch-size", str(args.batch_size), *RUNS[name]])
        s, _ = plan.settings_for(a, cfg, torch.device("cpu"))
        p = memory.plan(cfg, s)
        fixed = memory.state_bytes(cfg, s)["weights"] + memory.state_bytes(cfg, s)["optimizer"]
        steps = {k: sum(v.values()) - v["baseline"] - v["malloc_kept"] - fixed
                 for k, v in p.moments.items() if k != "loading the weights"}
        at = max(steps, key=steps.get)
        real = live_peak(cfg, s)
        print(f"{name:8} plan {steps[at] / 2**20:7,.0f} ({at})  real {real / 2**20:7,.0f}  "
              f"plan/real {steps[at] / real:.3f}", flush=True)
    return 0


def print_rows(args, rows):
    print(f"\n{args.model}, micro-batch {args.batch_size} x {args.block_size}, {args.precision} on {args.device}, "
          f"{args.steps} steps: train_peak_memory_mb against plan.py's peak_mb")
    print(f"{'run':8} {'flags':34} {'plan MB':>9} {'real MB':>9} {'plan/real':>9}  plan's peak at")
    for r in rows:
        real = "failed" if r["real_mb"] is None else f"{r['real_mb']:,.0f}"
        ratio = "" if r["plan_over_real"] is None else f"{r['plan_over_real']:.3f}"
        print(f"{r['run']:8} {r['flags']:34} {r['plan_mb']:9,.0f} {real:>9} {ratio:>9}  {r['plan_peak_at']}")
    real = {r["run"]: r for r in rows if r["real_mb"] is not None}
    if "default" in real and "lora" in real:
        lora, full = real["lora"], real["default"]
        print(f"LoRA / full fine-tune: real {lora['real_mb'] / full['real_mb']:.3f}, "
              f"planned {lora['plan_mb'] / full['plan_mb']:.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt2-medium", help="a preset shape (default: %(default)s)")
    p.add_argument("--runs", default="default,plain,ckpt,lora", help=f"comma-separated, of {', '.join(RUNS)}")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (the peak is from step 2 on)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--alloc", action="store_true",
                   help="tune glibc's malloc in train.py's process first (bench.py's alloc option)")
    p.add_argument("--live", action="store_true", help="live tensors only, in this process (see above)")
    p.add_argument("--layers", type=int, help="with --live: this many blocks instead of the preset's")
    args = p.parse_args(argv)
    if args.live:
        return live_main(args)

    rows = []
    with tempfile.TemporaryDirectory(prefix="plan_check_") as tmp:
        model_dir, text = os.path.join(tmp, "model"), os.path.join(tmp, "train.txt")
        make_model_dir(args.model, model_dir)
        make_text(text)
        for name in args.runs.split(","):
            argv = train_argv(args, model_dir, text, os.path.join(tmp, f"out_{name}"), RUNS[name])
            predicted = predict(argv)
            real, seconds = run_one(argv, args.alloc)
            rows.append({"run": name, "flags": " ".join(RUNS[name]) or "(train.py's defaults)",
                         "plan_mb": round(predicted.peak_mb, 1), "plan_peak_at": predicted.peak_at,
                         "real_mb": real, "seconds": round(seconds),
                         "plan_over_real": None if real is None else round(predicted.peak_mb / real, 3)})
    print_rows(args, rows)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"config": vars(args), "rows": rows}, f, indent=1)
    return 0 if all(r["real_mb"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
