"""train.py --plan: will this run fit? The plan of memory.py, printed, before anything runs.

`main` reads the model's config.json alone (a preset that is not downloaded: its
shape from config.py), and resolves the flags with train.py's own functions (run.py:
the precision, the chunked loss and attention_recompute on the CPU, the block size,
the micro-batch; `settings_for`), so the plan is the plan of the run that the same
command without --plan would start. It fits the plan into --memory (8GB = 8 x 10^9
bytes, 8GiB = 8 x 2^30), else the device's memory (the GPU's, or the machine's
physical memory), and says which options would let a larger micro-batch fit.
The tables of docs/memory.md and docs/plan.md are computed from it by
benchmarks/plan_tables.py.
"""

import os
from dataclasses import asdict, replace

import torch

from gpt2.config import PRESETS, GPT2Config
from gpt2.distributed import Dist
from gpt2.errors import UserError
from gpt2.files import write_json
from gpt2.precision import eval_note, eval_precision, pick_device, resolve_precision

from . import scratch
from .batch import choose_batch
from .hub import ALIASES, default_weights_dir, is_hub_id
from .memory import CUDA_BASELINE_NOTE, MB, PART_NOTES, Settings, count_parameters, plan
from .shardplan import format_sharded, sharded_json
from .run import pick_attention_recompute, pick_block_size, pick_loss_chunk


def largest_micro_batch(memory_bytes: int, cfg: GPT2Config, s: Settings, limit: int = 1 << 16) -> int:
    """The largest micro-batch whose planned peak fits in memory_bytes (0: not even one sequence).

    The peak grows with the micro-batch, so: double until it does not fit, then bisect.
    """
    def fits(b):
        return plan(cfg, replace(s, micro_batch=b)).peak_bytes <= memory_bytes

    if not fits(1):
        return 0
    good, bad = 1, 2
    while bad <= limit and fits(bad):
        good, bad = bad, 2 * bad
    bad = min(bad, limit + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def combinations(cfg: GPT2Config, s: Settings, memory_bytes: int | None = None, lora: bool = False,
                 recompute=None) -> list:
    """Rows for the table of options: checkpointing x chunked loss (x LoRA when asked).

    Each row: the options, the peak at the chosen micro-batch, the largest micro-batch that
    fits in memory_bytes (None without a memory size). recompute(checkpointing, lora_rank) -> bool,
    if given, is attention_recompute for a row (train.py's choice depends on both).
    """
    chunk = s.loss_chunk or 1024
    ranks = (0, s.lora_rank or 8) if lora else (s.lora_rank,)
    rows = []
    for rank in ranks:
        for ckpt in (False, True):
            for loss_chunk in (0, chunk):
                keep = s.attention_recompute if recompute is None else recompute(ckpt, rank)
                t = replace(s, checkpointing=ckpt, loss_chunk=loss_chunk, lora_rank=rank, attention_recompute=keep)
                rows.append({"checkpointing": ckpt, "loss_chunk": loss_chunk, "lora_rank": rank,
                             "attention_recompute": t.attention_recompute,
                             "peak_mb": round(plan(cfg, t).peak_mb, 1), "chosen": t == s,
                             "largest_micro_batch": None if memory_bytes is None
                             else largest_micro_batch(memory_bytes, cfg, t)})
    return rows


# --- the printed table and the JSON ------------------------------------------------------------

def _options_label(checkpointing: bool, loss_chunk: int, lora_rank: int, attention_recompute: bool = False) -> str:
    parts = ([f"chunked loss {loss_chunk}"] if loss_chunk else []) + (["checkpointing"] if checkpointing else [])
    parts += ["attention recompute"] if attention_recompute else []
    parts += [f"LoRA r={lora_rank}"] if lora_rank else []
    return " + ".join(parts) or "plain"


def _exactness(part: str, s: Settings) -> str:
    exact = PART_NOTES[part][2]
    if exact is None:
        exact = s.device == "cpu"
    return "exact" if exact else "measured" if part == "baseline" and s.device == "cpu" else "estimate"


def _header(cfg: GPT2Config, s: Settings, name: str | None) -> list:
    p = count_parameters(cfg, s.lora_rank, s.lora_targets)
    what = name or f"GPT-2 {cfg.n_layer} layers x {cfg.n_embd}"
    measure = "torch.cuda.max_memory_allocated" if s.device == "cuda" else "peak resident memory (ru_maxrss)"
    return [f"memory plan: {what}, {p.total / 1e6:,.1f}M parameters ({p.trainable / 1e6:,.1f}M trainable), "
            f"micro-batch {s.micro_batch} x {s.block_size} tokens, {s.precision} on {s.device}, "
            f"{_options_label(s.checkpointing, s.loss_chunk, s.lora_rank, s.attention_recompute)}"
            + (f", accumulation {s.grad_accum}" if s.grad_accum > 1 else ""),
            f"peak = what train.py reports as train_peak_memory_mb: {measure}; MB = 2^20 bytes", ""]


def format_plan(cfg: GPT2Config, s: Settings, memory_bytes: int | None = None, lora: bool = False,
                name: str | None = None, recompute=None) -> str:
    """The printed plan: the peak part by part, the moments of a step, then the table of options
    (combinations: lora and recompute are its own)."""
    p, W = plan(cfg, s), 52  # W: the width of the first column
    lines = _header(cfg, s, name) + [f"{'at the peak, ' + p.peak_at:{W + 2}} {'MB':>9}"]
    for part, n in p.parts.items():
        if n or part in ("gradients", "optimizer", "activations"):
            label, what, _ = CUDA_BASELINE_NOTE if part == "baseline" and s.device == "cuda" else PART_NOTES[part]
            lines.append(f"  {label:{W}} {n / MB:9,.0f}  {_exactness(part, s):9} {what}")
    fits = "" if memory_bytes is None else \
        f"  {'fits in' if p.peak_bytes <= memory_bytes else 'does NOT fit in'} {memory_bytes / MB:,.0f} MB"
    lines += [f"  {'peak':{W}} {p.peak_mb:9,.0f}{fits}", "", "the moments of a step where the peak can be (MB):"]
    lines += [f"  {k:{W}} {sum(v.values()) / MB:9,.0f}" + ("  <- peak" if k == p.peak_at else "")
              for k, v in p.moments.items()]
    room = "" if memory_bytes is None else f"  largest micro-batch in {memory_bytes / MB:,.0f} MB"
    lines += ["", f"{f'options, at micro-batch {s.micro_batch}':{W + 2}} {'peak MB':>9}{room}"]
    for row in combinations(cfg, s, memory_bytes, lora, recompute):
        label = _options_label(row["checkpointing"], row["loss_chunk"], row["lora_rank"], row["attention_recompute"])
        fit = "" if memory_bytes is None else f"  {row['largest_micro_batch']:>8}"
        lines.append(f"  {label:{W}} {row['peak_mb']:9,.0f}{fit}" + ("  <- chosen" if row["chosen"] else ""))
    return "\n".join(lines)


def plan_json(cfg: GPT2Config, s: Settings, memory_bytes: int | None = None, lora: bool = False,
              recompute=None) -> dict:
    """The plan as a JSON-able dict: peak_mb, the parts at the peak, the moments, the options."""
    p = plan(cfg, s)
    counts = count_parameters(cfg, s.lora_rank, s.lora_targets)
    return {
        "peak_mb": round(p.peak_mb, 1),
        "peak_at": p.peak_at,
        "measure": "torch.cuda.max_memory_allocated" if s.device == "cuda" else "peak resident memory (ru_maxrss)",
        "settings": {**asdict(s), "lora_targets": list(s.lora_targets)},
        "model": {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")},
        "parameters": {"total": counts.total, "trainable": counts.trainable},
        "parts_mb": {k: round(v / MB, 1) for k, v in p.parts.items()},
        "exact": {k: _exactness(k, s) for k in p.parts},
        "moments_mb": {k: round(sum(v.values()) / MB, 1) for k, v in p.moments.items()},
        "memory_mb": None if memory_bytes is None else round(memory_bytes / MB, 1),
        "fits": None if memory_bytes is None else p.peak_bytes <= memory_bytes,
        "largest_micro_batch": None if memory_bytes is None else largest_micro_batch(memory_bytes, cfg, s),
        "combinations": combinations(cfg, s, memory_bytes, lora, recompute),
    }



# --- train.py --plan: from the flags to a printed plan -----------------------------------------

def model_config(model: str, weights_dir: str | None = None) -> GPT2Config:
    """The config of --model, read from config.json alone: no weight is read, nothing is downloaded.

    The same names as hub.resolve: a preset (gpt2, ...) is weights/<name>/config.json when it has
    been downloaded, else the preset's shape (config.py); a directory is its config.json; a hub id
    org/name must have been downloaded (weights/org/name/config.json).
    """
    weights_dir = weights_dir or default_weights_dir()
    path = os.path.expanduser(model)
    if model in ALIASES:  # before the directory: ./gpt2 is this package, --model gpt2 the preset
        downloaded = os.path.join(weights_dir, model, "config.json")
        return GPT2Config.from_json(downloaded) if os.path.isfile(downloaded) else PRESETS[model]
    if os.path.isdir(path):
        return GPT2Config.from_json(os.path.join(path, "config.json"))
    if os.path.exists(path):
        raise UserError(f"{model}: is a file, not a model directory")
    if is_hub_id(model):
        downloaded = os.path.join(weights_dir, *model.split("/"), "config.json")
        if os.path.isfile(downloaded):
            return GPT2Config.from_json(downloaded)
        raise UserError(f"--plan --model {model}: not downloaded ({downloaded} is missing) and --plan downloads "
                        f"nothing: download it first (any training run with --model {model}) or pass its directory")
    raise UserError(f"{model}: no such directory, and not a known model name ({', '.join(ALIASES)}) "
                    f"or a hub id org/name")


def planned_device(name: str, memory) -> torch.device:
    """The device to plan for: this machine's, or a GPU it does not have (--device cuda --memory 24GB)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        if not memory:
            raise UserError(f"--plan --device {name}: no GPU here to read its memory from; add --memory, "
                            f"e.g. --memory 24GB")
        try:
            return torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    return pick_device(name)


def settings_for(args, cfg: GPT2Config, device) -> tuple:
    """(Settings, notes): what train.py would train with, from its parsed flags, on `device`.

    The choices are run.py's own functions, so the plan follows train.py's defaults (the
    chunked loss and attention_recompute on the CPU, ...); notes say why, as a run's header does.
    """
    if device.type == "cuda" and not torch.cuda.is_available() and args.precision == "auto":
        precision, why = "bf16", "auto on a GPU with bf16 (Ampere and newer); planned without one here"
    else:
        precision, why = resolve_precision(args.precision, device)
    loss_chunk, chunk_why = pick_loss_chunk(args.loss_chunk, device)
    block_size = pick_block_size(args.block_size, cfg.n_positions)
    recompute, recompute_why = pick_attention_recompute(args.attention_recompute, device, args.checkpointing,
                                                        block_size, lora=bool(args.lora))
    # batch.py's choice without probing: "auto" is micro-batch 2 (main() says what would fit)
    micro, accum, _ = choose_batch(args.batch_size, args.grad_accum, args.effective_batch, Dist())
    s = Settings(micro_batch=micro, block_size=block_size,
                 precision=precision, device=device.type, checkpointing=args.checkpointing,
                 attention_recompute=recompute, loss_chunk=loss_chunk, lora_rank=args.lora,
                 lora_targets=args.lora_targets, lora_dropout=args.lora_dropout, grad_accum=accum)
    p = count_parameters(cfg, s.lora_rank, s.lora_targets)
    lora = f" (LoRA rank {s.lora_rank})" if s.lora_rank else ""
    evals = eval_note(precision, eval_precision(args.precision, precision))
    notes = [f"precision {precision}: {why}{evals}", f"loss: {chunk_why}", f"attention: {recompute_why}",
             f"parameters: {p.trainable:,} trainable of {p.total:,}{lora}"]
    return s, notes


def device_memory(device) -> tuple:
    """(bytes, what they are): the memory to fit when --memory is not given."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"{props.name}'s memory"
    # A container's memory limit may be lower than the machine's: --memory says so.
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the machine's physical memory"


def main(args) -> int:
    """train.py --plan: print the plan of the run these flags describe; --json PATH: write it too."""
    cfg = scratch.config(args) if args.from_scratch else model_config(args.model, args.weights_dir)
    name = scratch.name(args) if args.from_scratch else args.model
    if args.dropout is not None:  # the CPU's attention path depends on it (attention_kernel)
        cfg = cfg.with_dropout(args.dropout)
    device = planned_device(args.device, args.memory)
    s, notes = settings_for(args, cfg, device)
    memory, what = (args.memory, "--memory") if args.memory else device_memory(device)

    def recompute(checkpointing, lora_rank):  # train.py's choice for each row of the table of options
        return pick_attention_recompute(args.attention_recompute, device, checkpointing, s.block_size,
                                        lora=bool(lora_rank))[0]

    print(format_plan(cfg, s, memory, lora=True, name=name, recompute=recompute))
    print(f"\nmemory to fit: {memory / MB:,.0f} MB ({what})")
    for note in notes:
        print(note)
    processes = args.processes or int(os.environ.get("WORLD_SIZE", "1"))  # shardplan.py: DDP, FSDP, offload
    print("\n" + format_sharded(cfg, s, processes, memory))
    if args.batch_size == "auto":
        print(f"--batch-size auto: planned with micro-batch {s.micro_batch}; the largest that fits in "
              f"{memory / MB:,.0f} MB is {largest_micro_batch(memory, cfg, s)}")
    if args.json:
        try:
            write_json(args.json, {**plan_json(cfg, s, memory, lora=True, recompute=recompute),
                                   "sharding": sharded_json(cfg, s, processes, memory)})
        except OSError as e:
            raise UserError(f"--json {args.json}: cannot write it ({e.strerror or e})") from None
        print(f"written to {args.json}")
    return 0
