"""The CPU measurements of docs/performance.md: groups of bench.py runs, round-robin.

    python benchmarks/cpu_suite.py speed256 --rounds 3      # block 256: the defaults, fp32, bf16, options
    python benchmarks/cpu_suite.py compile256 --rounds 2    # torch.compile, fp32 and bf16
    python benchmarks/cpu_suite.py mem1024 --rounds 2       # block 1024: peak memory and speed
    python benchmarks/cpu_suite.py speed256 --only defaults,bf16 --rounds 3

Not a test: it measures, it asserts nothing. Each variant is one benchmarks/bench.py
command line (GPT-2 124M shape, random weights, micro-batch 2); a round runs every
variant of the group once, one after the other, and the rounds repeat that, so that
a slow spell of the machine (a VM) hits every variant alike instead of one. Every
round's result is kept; a variant's figure is its median over the rounds (its best
round is kept too). Ratios are ours / the other side, of the medians, and per round.
Results: benchmarks/results/cpu/<group>.json (--out to change).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "bench.py")

COMMON = ["--device", "cpu", "--model-config", "gpt2", "--batch-size", "2", "--eval-batches", "0"]
B256 = COMMON + ["--block-size", "256", "--steps", "5", "--warmup", "1"]
B1024 = COMMON + ["--block-size", "1024", "--steps", "2", "--warmup", "1"]
DEFAULTS = ["--ours-opts", "default", "--ours-precision", "default", "--hf-precision", "default"]

GROUPS = {
    "speed256": {
        # Each side's default, side by side (on a CPU without native bf16: fp32 both).
        "defaults": B256 + ["--side", "ours,trainer"] + DEFAULTS,
        # Both in fp32 / both in bf16 (the Trainer with --bf16), ours with train.py's options.
        "fp32": B256 + ["--side", "ours,trainer", "--ours-opts", "default", "--precision", "fp32"],
        "bf16": B256 + ["--side", "ours,trainer", "--ours-opts", "default", "--precision", "bf16"],
        "hf_loop_fp32": B256 + ["--side", "hf", "--precision", "fp32"],
        "ours_plain": B256 + ["--side", "ours", "--ours-opts", "chunk=0", "--precision", "fp32"],
        "ours_chunk": B256 + ["--side", "ours", "--ours-opts", "chunk=1024", "--precision", "fp32"],
        "ours_chunk_recompute": B256 + ["--side", "ours", "--ours-opts", "chunk=1024,recompute", "--precision", "fp32"],
        "ours_default_alloc": B256 + ["--side", "ours", "--ours-opts", "default,alloc", "--precision", "fp32"],
        "ours_default_thp": B256 + ["--side", "ours", "--ours-opts", "default,thp", "--precision", "fp32"],
        "ours_default_alloc_thp": B256 + ["--side", "ours", "--ours-opts", "default,alloc,thp", "--precision", "fp32"],
    },
    "compile256": {
        "ours_default_fp32": B256 + ["--side", "ours", "--ours-opts", "default", "--precision", "fp32"],
        "ours_compile_fp32": B256[:-2] + ["--warmup", "2", "--side", "ours", "--ours-opts", "default,compile",
                                          "--precision", "fp32"],
        "ours_default_bf16": B256 + ["--side", "ours", "--ours-opts", "default", "--precision", "bf16"],
        "ours_compile_bf16": B256[:-2] + ["--warmup", "2", "--side", "ours", "--ours-opts", "default,compile",
                                          "--precision", "bf16"],
    },
    "mem1024": {
        "defaults": B1024 + ["--side", "ours,trainer"] + DEFAULTS,
        "ours_default_alloc": B1024 + ["--side", "ours", "--ours-opts", "default,alloc", "--precision", "fp32"],
        "ours_chunk_norecompute": B1024 + ["--side", "ours", "--ours-opts", "chunk=1024,recompute=0",
                                           "--precision", "fp32"],
        "ours_nochunk_recompute": B1024 + ["--side", "ours", "--ours-opts", "chunk=0,recompute", "--precision", "fp32"],
        "ours_plain": B1024 + ["--side", "ours", "--ours-opts", "chunk=0,recompute=0", "--precision", "fp32"],
    },
}


def run_bench(argv):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        t0 = time.time()
        proc = subprocess.run([sys.executable, BENCH, *argv, "--json", path], capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0 or not os.path.getsize(path):
            return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:], "wall_s": wall}
        with open(path) as f:
            result = json.load(f)
        result["wall_s"] = wall
        return result
    finally:
        os.unlink(path)


def side_keys(result):
    return [s for s in ("ours", "hf", "trainer") if result.get(s)]


def summarize(name, runs):
    """Per side: median and best tokens/s, samples/s, peak MB over the rounds; ratios ours / other."""
    out = {"rounds": len(runs)}
    sides = side_keys(runs[0]) if runs and "error" not in runs[0] else []
    for s in sides:
        rs = [r[s] for r in runs if r.get(s) and "train_tokens_per_s" in r[s]]
        if not rs:
            continue
        tps = [r["train_tokens_per_s"] for r in rs]
        out[s] = {
            "precision": rs[0].get("precision"), "opts": rs[0].get("opts"),
            "tokens_per_s_median": statistics.median(tps), "tokens_per_s_best": max(tps),
            "tokens_per_s_rounds": tps,
            "samples_per_s_median": statistics.median(r["train_samples_per_s"] for r in rs),
            "step_s_median": statistics.median(statistics.median(r["step_times_s"]) for r in rs),
            "peak_mb_median": statistics.median(r["peak_train_mb"] for r in rs),
            "peak_mb_rounds": [r["peak_train_mb"] for r in rs],
            "rss_before_train_mb": statistics.median(r.get("rss_before_train_mb", 0) for r in rs),
            "first_step_over_median_s": statistics.median(r.get("first_step_over_median_s", 0) for r in rs),
        }
        if s == "trainer":
            cyc = [r["cycle_tokens_per_s"] for r in rs if r.get("cycle_tokens_per_s")]
            out[s]["cycle_tokens_per_s_median"] = statistics.median(cyc) if cyc else None
    if "ours" in out:
        for s in sides:
            if s == "ours" or s not in out:
                continue
            o, t = out["ours"], out[s]
            per_round = [r["ours"]["train_tokens_per_s"] / r[s]["train_tokens_per_s"] for r in runs
                         if r.get("ours", {}).get("train_tokens_per_s") and r.get(s, {}).get("train_tokens_per_s")]
            out[f"ours/{s}"] = {
                "speed_of_medians": o["tokens_per_s_median"] / t["tokens_per_s_median"],
                "speed_per_round": per_round,
                "speed_of_bests": o["tokens_per_s_best"] / t["tokens_per_s_best"],
                "peak_mb_of_medians": o["peak_mb_median"] / t["peak_mb_median"],
            }
    return out


def print_summary(group, summary):
    print(f"\n{group}: medians over the rounds (tokens/s, samples/s, step s, peak MB)")
    for name, s in summary.items():
        for side in ("ours", "hf", "trainer"):
            if side in s:
                v = s[side]
                print(f"  {name:26} {side:8} {v['precision'] or '':5} {v['tokens_per_s_median']:8.1f} tok/s "
                      f"{v['samples_per_s_median']:7.3f} samples/s {v['step_s_median']:7.3f} s "
                      f"{v['peak_mb_median']:8,.0f} MB   {v['opts'] or ''}")
        for k, v in s.items():
            if k.startswith("ours/"):
                print(f"  {name:26} {k:16} speed {v['speed_of_medians']:.3f}x "
                      f"(rounds {', '.join(f'{x:.2f}' for x in v['speed_per_round'])}), "
                      f"peak {v['peak_mb_of_medians']:.3f}x")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("group", choices=sorted(GROUPS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", help="comma-separated variants of the group (default: all)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "cpu"))
    args = p.parse_args(argv)
    variants = GROUPS[args.group]
    if args.only:
        variants = {k: variants[k] for k in args.only.split(",")}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.group}{'_' + args.only.replace(',', '+') if args.only else ''}.json")
    runs = {name: [] for name in variants}
    record = {"group": args.group, "python": platform.python_version(), "machine": platform.machine(),
              "commands": {name: "python benchmarks/bench.py " + " ".join(a) for name, a in variants.items()},
              "runs": runs}
    for r in range(args.rounds):
        for name, bench_argv in variants.items():
            print(f"[round {r + 1}/{args.rounds}] {name}: bench.py {' '.join(bench_argv)}", flush=True)
            res = run_bench(bench_argv)
            runs[name].append(res)
            print(res.get("table", res.get("error", "")) + "\n" + res.get("stderr", "")[-1500:], flush=True)
            record["summary"] = {n: summarize(n, rs) for n, rs in runs.items() if rs}
            with open(path, "w") as f:  # after every run: a killed suite keeps what it measured
                json.dump(record, f, indent=1)
    print_summary(args.group, record["summary"])
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
