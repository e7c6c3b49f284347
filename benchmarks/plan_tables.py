"""The tables of docs/memory.md (what fits where) and docs/plan.md, computed from the plan.

    python benchmarks/plan_tables.py            # the fits table of docs/memory.md
    python benchmarks/plan_tables.py --plan-md  # the tables of docs/plan.md
    python benchmarks/plan_tables.py --sharding # the tables of docs/distributed.md (harness/shardplan.py)

tests/test_plan.py checks that the docs hold exactly these tables. Every cell is
harness/memory.py's plan for the Settings train.py would use with those flags
(harness/plan.py settings_for, from the parsed flags): computed, not measured.
"""

import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2.config import PRESETS  # noqa: E402
from harness.cli import train_parser  # noqa: E402
from harness.memory import (GB, MB, Settings, activation_bytes, block_terms, count_parameters, plan,  # noqa: E402
                            state_bytes)
from harness.plan import _options_label, combinations, largest_micro_batch, settings_for  # noqa: E402


# --- the table of docs/memory.md: what fits where ---------------------------------------------------------

FITS_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
FITS_MEMORY_GB = (8, 12, 16, 24)
FITS_OPTIONS = (("full fine-tune", []), ("--checkpointing", ["--checkpointing"]),
                ("--lora 8 --checkpointing", ["--lora", "8", "--checkpointing"]))


def fits_table(models=FITS_MODELS, memory_gb=FITS_MEMORY_GB, options=FITS_OPTIONS) -> str:
    """A markdown table: the largest micro-batch that fits, by model, options and memory (0: none).

    Every cell is plan.largest_micro_batch for the Settings train.py would use with those flags
    on a CUDA GPU in bf16 at block 1024 (settings_for): computed, not measured.
    """
    header = ("CUDA, bf16, block size 1024, train.py's other defaults (on a GPU: the plain loss; "
              "--loss-chunk 1024 fits more): the largest micro-batch whose planned peak "
              "(torch.cuda.max_memory_allocated) fits in N GB = N x 10^9 bytes, as `--memory NGB`; 0: not "
              "even one sequence. Computed by harness/plan.py (`train.py --plan`), not measured on these GPUs; "
              "a card leaves less than its size to PyTorch's tensors (the CUDA context, the caching "
              "allocator's fragmentation).")
    lines = textwrap.wrap(header, 100) + ["", "| model | options | " + " | ".join(f"{gb} GB" for gb in memory_gb)
                                          + " |", "|---|---|" + "---:|" * len(memory_gb)]
    device = torch.device("cuda")  # a name only: nothing runs on it
    for name in models:
        for label, flags in options:
            args = train_parser().parse_args(["--model", name, "--bf16", "--block-size", "1024", *flags])
            s, _ = settings_for(args, PRESETS[name], device)
            cells = [str(largest_micro_batch(gb * 10**9, PRESETS[name], s)) for gb in memory_gb]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the tables of the module docstring ----------------------------------------------------------

def _state_table() -> str:
    def row(*cells):
        return "    " + f"{cells[0]:12}" + "".join(f"{c:>12}" for c in cells[1:])

    lines = [row("model", "parameters", "weights", "+ gradients", "+ AdamW", "LoRA r=8:", "LoRA r=8:"),
             row("", "", "4 B each", "8 B each", "16 B each", "trainable", "all state")]
    for name in ("distilgpt2", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        cfg = PRESETS[name]
        full, lora = state_bytes(cfg, Settings()), state_bytes(cfg, Settings(lora_rank=8))
        n, r = count_parameters(cfg).total, count_parameters(cfg, 8).lora
        w, g, o = full["weights"] / GB, full["gradients"] / GB, full["optimizer"] / GB
        lines.append(row(name, f"{n / 1e6:,.1f}M", f"{w:.2f} GB", f"{w + g:.2f} GB", f"{w + g + o:.2f} GB",
                         f"{r / 1e6:.2f}M", f"{sum(lora.values()) / GB:.2f} GB"))
    return "\n".join(lines)


def _block_table() -> str:
    cfg, T = PRESETS["gpt2"], 1024
    cuda = block_terms(cfg, Settings(micro_batch=1, block_size=T, precision="bf16", device="cuda"))
    cpu = block_terms(cfg, Settings(micro_batch=1, block_size=T))
    lines = [f"    {'gpt2 (C = 768, nh = 12), T = 1024: bytes per token':74} {'CUDA bf16':>10} {'CPU fp32':>10}"]
    for (what, a), (_, b) in zip(cuda + [("total", sum(n for _, n in cuda))], cpu + [("", sum(n for _, n in cpu))]):
        lines.append(f"    {what:74} {a / T:10,.0f} {b / T:10,.0f}")
    return "\n".join(lines)


def _activation_table() -> str:
    cases = [("CUDA bf16", Settings(device="cuda", precision="bf16"), 0.1),
             ("CPU fp32, dropout 0", Settings(), 0.0), ("CPU fp32, dropout 0.1", Settings(), 0.1),
             ("CUDA, checkpointing", Settings(device="cuda", precision="bf16", checkpointing=True), 0.1)]
    lines = [f"    {'gpt2, B x T':14}" + "".join(f"{label:>25}" for label, _, _ in cases)]
    for b, t in ((1, 256), (1, 1024), (8, 1024)):
        row = f"    {f'{b} x {t}':14}"
        for _, s, p in cases:
            act = activation_bytes(PRESETS["gpt2"].with_dropout(p), replace(s, micro_batch=b, block_size=t))
            row += f"{(act['embeddings'] + act['blocks'] + act['ln_f']) / MB:>22,.0f} MB"
        lines.append(row)
    return "\n".join(lines)


def _options_table() -> str:
    lines = [f"    {'CUDA bf16':15} {'options, micro-batch 8 x 1024':34} {'peak':>8}"
             f" {'largest micro-batch in 24 GB':>30} {'in 80 GB':>9}"]
    for name in ("gpt2", "gpt2-medium"):
        s = Settings(micro_batch=8, block_size=1024, precision="bf16", device="cuda")
        rows = zip(combinations(PRESETS[name], s, 24 * GB), combinations(PRESETS[name], s, 80 * GB))
        for row, big in rows:
            label = _options_label(row["checkpointing"], row["loss_chunk"], 0)
            lines.append(f"    {name:15} {label:34} {row['peak_mb'] / 1024:5.1f} GB {row['largest_micro_batch']:>30}"
                         f" {big['largest_micro_batch']:>9}")
    return "\n".join(lines)


def _lora_table() -> str:
    lines = ["    CUDA bf16, micro-batch 4 x 1024, chunked loss 1024 + checkpointing     full       LoRA r=8"]
    for name in ("gpt2-medium", "gpt2-large", "gpt2-xl"):
        s = Settings(micro_batch=4, block_size=1024, precision="bf16", device="cuda",
                     checkpointing=True, loss_chunk=1024)
        full, lora = plan(PRESETS[name], s).peak_bytes, plan(PRESETS[name], replace(s, lora_rank=8)).peak_bytes
        lines.append(f"    {name:68} {full / GB:5.1f} GB {lora / GB:8.1f} GB")
    return "\n".join(lines)


# Measured peaks (MB), to set the plan against in the docstring. CUDA: benchmarks/results/h200 (bench.py,
# torch 2.11, an H200): gpt2, fp16, micro-batch x 1024 tokens. CPU: benchmarks/plan_check.py (train.py,
# torch 2.13, x86-64 Linux, glibc): fp32, micro-batch x 256 tokens, train.py's flags beside its defaults.
# benchmarks/plan_check.py's measurements (MB) of the peaks in the docstring's last table:
# CUDA on an H100 (benchmarks/results/h100), block 1024, bf16 (fp16 measured the same);
# the CPU on the development machine, block 256, fp32.
MEASURED_CUDA = [("gpt2", 1, (), 2691), ("gpt2", 1, ("--checkpointing",), 2269), ("gpt2", 4, (), 5482),
                 ("gpt2", 4, ("--checkpointing",), 4090), ("gpt2-medium", 1, (), 6310),
                 ("gpt2-medium", 1, ("--checkpointing",), 5681), ("gpt2-medium", 1, ("--lora", "8"), 3633),
                 ("gpt2-medium", 4, (), 10842), ("gpt2-medium", 4, ("--checkpointing",), 7194),
                 ("gpt2-xl", 1, ("--lora", "8", "--checkpointing"), 7304), ("gpt2-xl", 1, ("--lora", "8"), 12736),
                 ("gpt2-xl", 1, ("--checkpointing",), 24571)]
MEASURED_CPU = [("gpt2", 1, (), 2719), ("gpt2", 1, ("--lora", "8"), 1338),
                ("gpt2-medium", 1, (), 6880), ("gpt2-medium", 1, ("--loss-chunk", "0"), 7058),
                ("gpt2-medium", 1, ("--checkpointing",), 6295), ("gpt2-medium", 1, ("--lora", "8"), 2791),
                ("gpt2-medium", 1, ("--attention-recompute", "true"), 6558),
                ("gpt2-medium", 4, (), 8528), ("gpt2-medium", 4, ("--lora", "8"), 5264)]


def _measured_table() -> str:
    lines = [f"    {'run (MB)':62} {'planned':>9} {'measured':>9}"]
    for device, precision, block, rows in (("cuda", "bf16", 1024, MEASURED_CUDA), ("cpu", "fp32", 256, MEASURED_CPU)):
        for name, b, flags, mb in rows:
            args = train_parser().parse_args(["--precision", precision, "--block-size", str(block),
                                              "--batch-size", str(b), *flags])
            s, _ = settings_for(args, PRESETS[name], torch.device(device))
            where = "H100" if device == "cuda" else "CPU"
            label = f"{where}, {name}, {precision}, {b} x {block}, " + (" ".join(flags) or "defaults")
            lines.append(f"    {label:62} {plan(PRESETS[name], s).peak_mb:9,.0f} {mb:9,}")
    return "\n".join(lines)


def docstring_tables() -> list:
    """The tables of the module docstring, computed here (tests/test_plan.py checks they match)."""
    return [_state_table(), _block_table(), _activation_table(), _options_table(), _lora_table(), _measured_table()]


# --- the tables of docs/distributed.md: DDP, FSDP, offload -----------------------------------------------

SHARDING_MEMORY_GB = (8, 12, 24, 80)
SHARDING_PROCESSES = (1, 4)
SHARDING_FLAGS = ["--device", "cuda", "--bf16", "--batch-size", "1", "--checkpointing", "--loss-chunk", "1024"]


def sharding_tables() -> str:
    """Per-GPU memory of each strategy (shardplan.per_gpu), and the cheapest that fits each card, for 1 and 4
    GPUs: train.py --plan's numbers for SHARDING_FLAGS (micro-batch 1 x 1024, bf16, checkpointing, the chunked
    loss). Planned, not measured."""
    from harness.shardplan import STRATEGIES, cheapest, per_gpu

    head = "| model | " + " | ".join(f"{'plain' if (s, n) == ('DDP', 1) else s}, {n} GPU{'s' if n > 1 else ''}"
                                      for n in SHARDING_PROCESSES
                                      for s in STRATEGIES if not (s == "FSDP" and n == 1)) + " |"
    per = [head, "|" + "---|" * (head.count("|") - 1)]
    fits = ["| model | " + " | ".join(f"{gb} GB, {n} GPU{'s' if n > 1 else ''}" for gb in SHARDING_MEMORY_GB
                                      for n in SHARDING_PROCESSES) + " |"]
    fits.append("|" + "---|" * (fits[0].count("|") - 1))
    for model in FITS_MODELS:
        args = train_parser().parse_args(["--model", model, *SHARDING_FLAGS])
        s, _ = settings_for(args, PRESETS[model], torch.device("cuda"))
        rows = {n: per_gpu(PRESETS[model], s, n) for n in SHARDING_PROCESSES}
        per.append(f"| {model} | " + " | ".join(f"{rows[n][st]['gpu'] / GB:.1f}" for n in SHARDING_PROCESSES
                                               for st in STRATEGIES if not (st == "FSDP" and n == 1)) + " |")
        fits.append(f"| {model} | " + " | ".join(
            (cheapest(rows[n], gb * GB, n) or "none").replace("DDP", "plain" if n == 1 else "DDP")
            for gb in SHARDING_MEMORY_GB for n in SHARDING_PROCESSES) + " |")
    return "\n".join(per) + "\n\n" + "\n".join(fits)


if __name__ == "__main__":
    if "--sharding" in sys.argv:
        print(sharding_tables())
    else:
        print("\n\n".join(docstring_tables()) if "--plan-md" in sys.argv else fits_table())
