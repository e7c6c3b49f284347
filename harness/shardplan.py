"""The plan for several processes: per-GPU memory under DDP, FSDP and FSDP with offload.

memory.py plans one process holding everything. With N processes (torchrun) the
strategies differ in where the 16 bytes a trained parameter (4 weight + 4 gradient +
8 AdamW) go; what a micro-batch's forward and backward need (activations, the LM head
and the loss, working memory) is the same in all of them:

    DDP            the whole state on every GPU, plus DDP's gradient buckets (a second
                   copy of the gradients, 4 bytes a parameter, that the all-reduce reads)
    FSDP           the state / N on every GPU (gpt2/sharding.py), plus what is gathered
                   whole for the computation: the root (wte = the LM head, wpe, ln_f) for
                   the whole step, and two blocks (the one computing and the next one,
                   prefetched) in the gather dtype (2 bytes under bf16/fp16, 4 in fp32);
                   plus the whole gradient of the root and of a block before their
                   reduce-scatter (fp32). With accumulation the micro-steps before the
                   last keep the whole gradient (4 bytes a parameter) instead of sharding it.
    FSDP+offload   the GPU holds only what is gathered and the activations; the state / N
                   (16 bytes a parameter / N) is in host memory, per process
    LoRA           memory.py's plan with rank-8 adapters (the model frozen): not a full
                   fine-tune, the last resort here

The cheapest strategy that fits is the first of DDP, FSDP, FSDP+offload, LoRA whose
per-GPU figure fits: each is slower (FSDP: one more all-gather per step; offload: the
weights over PCIe twice a step, AdamW on the CPU) or trains less (LoRA) than the one
before. Every figure of FSDP and offload is an estimate, planned and not yet measured
on a GPU (docs/distributed.md).
"""

from dataclasses import replace

from gpt2.config import GPT2Config

from .memory import MB, Settings, count_parameters, plan

STRATEGIES = ("DDP", "FSDP", "FSDP+offload", "LoRA r=8")


def unit_parameters(cfg: GPT2Config) -> dict:
    """Parameters of FSDP's units (sharding.py): the root (embeddings, ln_f; the head is wte) and one block."""
    C = cfg.n_embd
    p = count_parameters(cfg)
    root = (cfg.vocab_size + cfg.n_positions) * C + 2 * C
    return {"root": root, "block": (p.total - root) // cfg.n_layer}


def per_gpu(cfg: GPT2Config, s: Settings, n: int) -> dict:
    """{strategy: {"state", "gathered", "rest", "gpu", "host"}} in bytes, per process, for n processes."""
    p = plan(cfg, s)
    P = count_parameters(cfg, s.lora_rank, s.lora_targets).trainable
    state = 16 * P  # fp32 weights, gradients, AdamW's two moments
    # What a micro-batch needs besides the state: the largest moment without its state parts.
    def rest(drop):
        return max(sum(v for k, v in parts.items() if k not in drop) for parts in p.moments.values())

    units = unit_parameters(cfg)
    g = 4 if s.precision == "fp32" else 2
    gathered = g * (units["root"] + 2 * units["block"])  # the root and two blocks, whole
    reducing = 4 * (units["root"] + units["block"])  # whole fp32 gradients before their reduce-scatter
    activations = rest(("weights", "gradients", "optimizer", "autocast_copies"))  # FSDP gathers 16-bit weights
    ddp_state = state + 4 * P * (n > 1)  # DDP's buckets
    rows = {
        "DDP": {"state": ddp_state, "gathered": 0, "rest": rest(("weights", "gradients", "optimizer")), "host": 0},
        "FSDP": {"state": state // n + (4 * P if s.grad_accum > 1 else 0), "gathered": gathered + reducing,
                 "rest": activations, "host": 0},
        "FSDP+offload": {"state": 0, "gathered": gathered + reducing, "rest": activations, "host": state // n},
    }
    lora = plan(cfg, replace(s, lora_rank=8))
    lora_state = sum(lora.parts[k] for k in ("weights", "gradients", "optimizer"))
    rows["LoRA r=8"] = {"state": lora_state, "gathered": 0, "rest": lora.peak_bytes - lora_state, "host": 0}
    for row in rows.values():
        row["gpu"] = row["state"] + row["gathered"] + row["rest"]
    return rows


def cheapest(rows: dict, memory: int, n: int):
    """The first strategy whose per-GPU bytes fit in memory (FSDP needs 2 processes or more), or None."""
    for name in STRATEGIES:
        if name == "FSDP" and n < 2:
            continue
        if rows[name]["gpu"] <= memory:
            return name
    return None


HOW = {"DDP": "torchrun --nproc_per_node={n} train.py ...", "FSDP": "torchrun --nproc_per_node={n} train.py --fsdp ...",
       "FSDP+offload": "train.py --offload ... (or torchrun --nproc_per_node={n} train.py --fsdp --offload)",
       "LoRA r=8": "--lora 8"}


def _how(strategy: str, n: int) -> str:
    if strategy == "DDP" and n == 1:
        return "plain (python train.py ..., one process)"
    return f"{strategy} ({HOW[strategy].format(n=n)})"


def format_sharded(cfg: GPT2Config, s: Settings, n: int, memory: int | None) -> str:
    """The printed table: per-GPU memory of each strategy for n processes, and the cheapest that fits."""
    rows = per_gpu(cfg, s, n)
    lines = [f"per GPU with {n} process(es), by strategy (MB; FSDP and offload: planned, not measured on a GPU):",
             f"  {'strategy':14} {'state':>9} {'gathered':>9} {'the rest':>9} {'per GPU':>9} {'host':>9}"]
    for name, r in rows.items():
        note = "  (needs 2 or more processes)" if name == "FSDP" and n < 2 else ""
        label = "plain" if name == "DDP" and n == 1 else name  # one process: nothing to wrap
        lines.append(f"  {label:14} {r['state'] / MB:9,.0f} {r['gathered'] / MB:9,.0f} {r['rest'] / MB:9,.0f} "
                     f"{r['gpu'] / MB:9,.0f} {r['host'] / MB:9,.0f}{note}")
    lines.append("  state: weights, gradients, AdamW (+ DDP's buckets; FSDP: / processes, + a whole gradient with "
                 "accumulation); gathered: whole units for the computation; the rest: activations, the LM head, "
                 "working memory (docs/distributed.md)")
    if memory is not None:
        best = cheapest(rows, memory, n)
        lines.append(f"cheapest that fits in {memory / MB:,.0f} MB per GPU: " +
                     (_how(best, n) if best else "none of them (fewer tokens per micro-batch, "
                                                                        "--checkpointing, more processes)"))
    return "\n".join(lines)


def sharded_json(cfg: GPT2Config, s: Settings, n: int, memory: int | None) -> dict:
    rows = per_gpu(cfg, s, n)
    return {"processes": n, "estimate": True,
            "per_gpu_mb": {k: round(r["gpu"] / MB, 1) for k, r in rows.items()},
            "host_mb": {k: round(r["host"] / MB, 1) for k, r in rows.items()},
            "cheapest": None if memory is None else cheapest(rows, memory, n)}
