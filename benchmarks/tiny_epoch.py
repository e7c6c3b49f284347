"""Measure: one epoch of a tiny GPT-2, train.py against transformers.Trainer, train_runtime.

    python benchmarks/tiny_epoch.py --rounds 3
    python benchmarks/tiny_epoch.py --rounds 1 --ours-flags "--attention-recompute false" --profile prof.txt

Not a test: it measures, it asserts nothing. Where per-step costs outside the matmuls
(Python, the loop's bookkeeping, data handling) show, with a model too small for its
matmuls to hide them: a GPT-2 of 2 layers, n_embd 64, n_head 2 (vocabulary 50,257,
1,024 positions; random weights), saved with weights.save_checkpoint next to GPT-2's
tokenizer files, trained for one epoch on the demo corpus (gpt2.data.demo_text(),
written to a file) in blocks of 128 tokens, micro-batch 2, fp32, no validation:

    ours     python train.py --model DIR --train-file text.txt --block-size 128 --epochs 1
             --validation-split 0 --no-progress --precision fp32 --out OUT
             train_runtime from OUT/train_results.json
    Trainer  the same weights (GPT2LMHeadModel.from_pretrained(DIR)) and the same blocks
             (tokenized by gpt2.data, so identical), TrainingArguments(num_train_epochs=1,
             per_device_train_batch_size=2, use_cpu=True, report_to=[],
             save_strategy="no", disable_tqdm=True, everything else its default);
             train_runtime from trainer.train()'s metrics

Each run is its own process; rounds alternate ours, Trainer, ours, ... and a side's
figure is its median round (all rounds are in the JSON). --profile runs ours once more
under cProfile (inside train.py's process) and writes the top functions to a file.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAINER_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import torch
import transformers
from transformers import GPT2LMHeadModel, Trainer, TrainingArguments
from harness.datasets import build_datasets
from gpt2.tokenizer import Tokenizer

transformers.logging.set_verbosity_error()
model_dir, text, cache, out, block, seed = sys.argv[1:7]
tok = Tokenizer.for_checkpoint(model_dir, 50257)
train, _, _ = build_datasets(text, None, 0, int(block), tok, cache)
blocks = torch.from_numpy(train.astype(np.int64))

class Blocks(torch.utils.data.Dataset):
    def __len__(self):
        return len(blocks)
    def __getitem__(self, i):
        return {{"input_ids": blocks[i], "labels": blocks[i]}}

model = GPT2LMHeadModel.from_pretrained(model_dir)
args = TrainingArguments(output_dir=out, num_train_epochs=1, per_device_train_batch_size=2, use_cpu=True,
                         report_to=[], save_strategy="no", disable_tqdm=True, seed=int(seed))
trainer = Trainer(model=model, args=args, train_dataset=Blocks())
metrics = trainer.train().metrics
import resource
metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
metrics["blocks"] = len(blocks)
metrics["attn_implementation"] = model.config._attn_implementation
metrics["dropout"] = [model.config.attn_pdrop, model.config.resid_pdrop, model.config.embd_pdrop]
json.dump(metrics, open(out + "/trainer_results.json", "w"))
"""


def make_model_dir(directory, seed=0):
    """A tiny GPT-2 (2 x 64, 2 heads, GPT-2's vocabulary and context), random, and GPT-2's tokenizer files."""
    import torch

    from gpt2.config import GPT2Config
    from gpt2.model import GPT2
    from gpt2.weights import save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(GPT2(GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=50257, n_positions=1024)), directory)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(ROOT, "weights", "gpt2", f), directory)


def write_demo_text(path):
    from harness.datasets import demo_text

    with open(path, "w", encoding="utf-8") as f:
        f.write(demo_text()[1])


def ours_cmd(args, model_dir, text, cache, out, extra_flags=(), python=()):
    return [sys.executable, *python, os.path.join(ROOT, "train.py"), "--model", model_dir, "--train-file", text,
            "--block-size", str(args.block_size), "--epochs", "1", "--validation-split", "0", "--no-progress",
            "--precision", "fp32", "--cache-dir", cache, "--out", out, *extra_flags]


def run_timed(cmd, results_file):
    """Run cmd; its results (results_file, JSON) and wall seconds, or its error."""
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "wall_s": wall}
    with open(results_file) as f:
        return {**json.load(f), "wall_s": wall, "command": " ".join(cmd), "stdout_tail": proc.stdout[-1500:]}


def run_ours(args, model_dir, text, cache, out, extra=()):
    cmd = ours_cmd(args, model_dir, text, cache, out, [*args.ours_flags.split(), *extra])
    return run_timed(cmd, os.path.join(out, "train_results.json"))


def run_trainer(args, model_dir, text, cache, out):
    os.makedirs(out, exist_ok=True)
    script = TRAINER_SCRIPT.format(root=ROOT)
    cmd = [sys.executable, "-c", script, model_dir, text, cache, out, str(args.block_size), str(args.seed)]
    return run_timed(cmd, os.path.join(out, "trainer_results.json"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--ours-flags", default="", help="more train.py flags for ours, e.g. \"--attention-recompute false\"")
    p.add_argument("--side", default="both", choices=("ours", "trainer", "both"))
    p.add_argument("--profile", help="also run ours once under cProfile; the top functions to this file")
    p.add_argument("--json", dest="json_out", default=os.path.join(ROOT, "benchmarks", "results", "cpu",
                                                                   "tiny_epoch.json"))
    args = p.parse_args(argv)
    rows = {"ours": [], "trainer": []}
    with tempfile.TemporaryDirectory(prefix="tiny_epoch_") as tmp:
        model_dir, text, cache = (os.path.join(tmp, n) for n in ("model", "text.txt", "cache"))
        make_model_dir(model_dir)
        write_demo_text(text)
        # Tokenize once, outside the timed runs (train.py's cache; train_runtime excludes it anyway).
        subprocess.run(ours_cmd(args, model_dir, text, cache, os.path.join(tmp, "warm"), ["--max-steps", "1"]),
                       capture_output=True, cwd=ROOT, check=True)
        for r in range(args.rounds):
            if args.side in ("ours", "both"):
                res = run_ours(args, model_dir, text, cache, os.path.join(tmp, f"ours{r}"))
                rows["ours"].append(res)
                print(f"round {r + 1} ours: train_runtime {res.get('train_runtime')} s "
                      f"(wall {res['wall_s']:.1f} s) {res.get('error', '')}", flush=True)
            if args.side in ("trainer", "both"):
                res = run_trainer(args, model_dir, text, cache, os.path.join(tmp, f"trainer{r}"))
                rows["trainer"].append(res)
                print(f"round {r + 1} Trainer: train_runtime {res.get('train_runtime')} s "
                      f"(wall {res['wall_s']:.1f} s) {res.get('error', '')}", flush=True)
        if args.profile:
            prof = os.path.join(tmp, "ours.prof")
            out = os.path.join(tmp, "ours_prof")
            cmd = ours_cmd(args, model_dir, text, cache, out, args.ours_flags.split(), ["-m", "cProfile", "-o", prof])
            subprocess.run(cmd, capture_output=True, cwd=ROOT, check=True)
            import io
            import pstats

            s = io.StringIO()
            st = pstats.Stats(prof, stream=s)
            st.sort_stats("cumulative").print_stats(60)
            st.sort_stats("tottime").print_stats(40)
            with open(args.profile, "w") as f:
                f.write(s.getvalue())
            print(f"profile: {args.profile}")
    summary = {}
    for side, rs in rows.items():
        ok = [r["train_runtime"] for r in rs if "train_runtime" in r]
        if ok:
            summary[side] = {"train_runtime_median": statistics.median(ok), "train_runtime_rounds": ok}
    if "ours" in summary and "trainer" in summary:
        summary["ours/trainer"] = summary["ours"]["train_runtime_median"] / summary["trainer"]["train_runtime_median"]
    print(json.dumps(summary, indent=1))
    os.makedirs(os.path.dirname(args.json_out), exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump({"config": vars(args), "summary": summary, "runs": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
