"""Benchmark: a training step (and evaluation) of this project vs transformers' GPT2LMHeadModel.

    python benchmarks/bench.py --device cpu --block-size 256 --steps 3 --warmup 1 --ours-opts default
    python benchmarks/bench.py --device cpu --side ours,trainer --ours-opts default \
        --ours-precision default --hf-precision default          # each side's default, side by side
    python benchmarks/bench.py --device cuda --precision fp16 --block-size 1024 --ours-batch-size 8 \
        --ours-opts chunk=1024,checkpointing

Not a test: it measures, it asserts nothing. Every side trains the same thing: the same
GPT-2 shape with random weights (no download), random token batches, torch's fused
AdamW (the Trainer's default "adamw_torch_fused"; lr 5e-5, no weight decay), gradient
clipping at 1.0, autocast + GradScaler (gpt2/precision.py), dropout 0.1 everywhere, as
run_clm.py with the Trainer would. The sides (--side: ours, hf, trainer, comma-separated;
both = ours,hf; all = ours,hf,trainer):

    ours      gpt2.model.GPT2 in a bare loop: forward, backward, clip, AdamW step
    hf        transformers' GPT2LMHeadModel (its defaults: SDPA attention) in the same loop
    trainer   the same model run by the real transformers.Trainer (TrainingArguments:
              per_device_train_batch_size, max_steps, use_cpu on the CPU, report_to=[],
              save_strategy="no", no logging, its default optimizer, --bf16/--fp16 when
              asked), over a Dataset of the random blocks with labels = input_ids. A
              TrainerCallback times each step from on_step_begin to on_step_end (forward,
              backward, clip, AdamW, zero_grad); the batch's collation comes before
              on_step_begin and is not in it ("cycle" in the JSON: on_step_end to on_step_end,
              everything included). No evaluation on this side.

ours runs with the options of --ours-opts:

    default         exactly what train.py picks on this device with no flags: the loss
                    chunk of harness.run.pick_loss_chunk, the attention recompute of
                    harness.run.pick_attention_recompute (options after it override it)
    chunk[=N]       the chunked LM-head loss, N positions at a time (default 1024; 0: off)
    recompute[=0|1] attention's T x T part recomputed in backward (model.py)
    checkpointing   activation checkpointing per block
    compile         torch.compile (its compile time: the warm-up step(s), in the JSON)
    alloc           glibc malloc tuned before the model is built: mallopt(M_MMAP_THRESHOLD,
                    1 GB) and mallopt(M_TRIM_THRESHOLD, 2 GB - 1), so that large tensors come
                    from the heap and are reused instead of being mmap()ed, page-faulted in
                    and unmapped again every step
    thp             THP_MEM_ALLOC_ENABLE=1: PyTorch aligns CPU allocations of 2 MB and more
                    and asks for transparent huge pages (madvise)

--hf-opts takes alloc and thp too, for the hf and trainer sides.

Precision: --precision for every side, or --ours-precision / --hf-precision (hf and
trainer) per side. auto: what train.py's --precision auto picks (gpt2.precision.
resolve_precision: on the CPU bf16 only where it is native, else fp32; bf16 or fp16 on
GPUs). default: each side's own default, i.e. auto for ours, and fp32 for hf and trainer
(the Trainer without --bf16/--fp16). On a CPU without native bf16 (AVX512-BF16/AMX),
bf16 is emulated.

Each side runs in its own process, one after the other, so that its peak memory is
its own: on CUDA torch.cuda.max_memory_allocated, on the CPU the process's peak
resident set (getrusage ru_maxrss), read after the training steps (before the
evaluation). The CPU peak includes what the process holds before training (Python,
torch, transformers for the HF sides, the weights); the table shows that part too.

Throughput: --warmup untimed steps (they allocate the optimizer state, compile, warm
the caches), then --steps timed ones; tokens/s = micro-batch x block size / the median
step time, samples/s = micro-batch / the median step time (evaluation: samples per
batch / the median batch time). With --rounds R every side runs R times, alternating,
and each keeps its best round: on a shared machine the best round is the one least
disturbed by other processes (all rounds are in the JSON).

Evaluation: samples/s of gpt2.evaluation.evaluate (ours) against what run_clm's
Trainer.evaluate does per batch (a forward with labels: the loss and the logits, then
argmax over the logits as its preprocess_logits_for_metrics does), summed on the
device and read once at the end.

MFU, on CUDA (model FLOPs utilisation: the FLOPs the model needs, over the peak the
GPU could do in that time; this is the one place the project explains it):

    MFU = train tokens/s x FLOPs per token / peak FLOP/s

FLOPs per token of a training step, as in PaLM (appendix B) and nanoGPT:

    6 N + 12 L H Q T        (H x Q = n_embd: 12 x n_layer x n_embd x T)

6N: forward (2 per multiply-add) + backward (twice the forward) through the weight
matrices; N = every parameter except the position embeddings (nanoGPT's convention).
The token embedding counts once: as a lookup it costs nothing, but it is also the LM
head, a (C x V) matmul for every position. Biases and LayerNorms count too (noise).
12 L H Q T: attention's two T x T matmuls (scores and weighted sum), forward and
backward, L layers, H heads of width Q, T positions; causality is not discounted.
Activation checkpointing's recomputation is not counted: it is work the model does
not need (that would be the "hardware" FLOPs utilisation, HFU). The peak is
--peak-tflops (default 989: an H100 SXM's dense bf16/fp16 tensor-core peak; an H200
is the same chip; use 495 for TF32 fp32, 312 for an A100's bf16).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PRESET_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "tiny")
SIDES = ("ours", "hf", "trainer")
PRECISIONS = ("auto", "default", "fp32", "fp16", "bf16")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="every side's (default: auto): see the module docstring")
    p.add_argument("--ours-precision", choices=PRECISIONS, help="ours only (default: --precision)")
    p.add_argument("--hf-precision", choices=PRECISIONS, help="hf and trainer only (default: --precision)")
    p.add_argument("--batch-size", type=int, default=2, help="micro-batch of every side (default: 2)")
    p.add_argument("--ours-batch-size", default=None,
                   help="micro-batch of ours only: a number, or auto (the largest that fits, CUDA only)")
    p.add_argument("--auto-limit", type=int, default=64,
                   help="--ours-batch-size auto tries up to this many sequences (default: 64; MFU is flat beyond)")
    p.add_argument("--block-size", type=int, default=256, help="sequence length (default: 256)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--rounds", type=int, default=1, help="run each side this many times, keep its best")
    p.add_argument("--model-config", default="gpt2", choices=PRESET_NAMES,
                   help="GPT-2 shape, random weights (tiny: 2 layers of 64, to try the script)")
    p.add_argument("--dropout", type=float, default=0.1, help="every dropout probability (default: 0.1, GPT-2's)")
    p.add_argument("--ours-opts", default="",
                   help="comma-separated: default, chunk[=N], recompute[=0|1], checkpointing, compile, alloc, thp")
    p.add_argument("--hf-opts", default="", help="comma-separated, for hf and trainer: alloc, thp")
    p.add_argument("--side", default="both",
                   help="ours, hf, trainer, comma-separated; both = ours,hf; all = ours,hf,trainer (default: both)")
    p.add_argument("--eval-batches", type=int, default=2, help="evaluation batches timed, 0: no evaluation")
    p.add_argument("--eval-batch-size", type=int, default=8, help="(default: 8, as train.py)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's peak for MFU (default: 989)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)  # one side, in a subprocess
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.opts = parse_opts(args.ours_opts)
    args.hf_env = parse_env_opts(args.hf_opts, "--hf-opts")
    args.sides = parse_sides(args.side)
    return args


def parse_sides(text):
    named = {"both": ["ours", "hf"], "all": list(SIDES)}
    sides = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        for side in named.get(item, [item]):
            if side not in SIDES:
                raise SystemExit(f"--side: unknown side {item!r} (ours, hf, trainer, both, all)")
            if side not in sides:
                sides.append(side)
    if not sides:
        raise SystemExit("--side: no side")
    return sides


def parse_opts(text):
    """--ours-opts -> {chunk, recompute, checkpointing, compile, default, alloc, thp}; None: train.py's choice."""
    opts = {"chunk": 0, "recompute": False, "checkpointing": False, "compile": False, "default": False,
            "alloc": False, "thp": False}
    items = [s.strip() for s in text.split(",") if s.strip()]
    if "default" in items:  # train.py's own choices first, the other options on top
        opts["default"] = True
        opts["chunk"] = opts["recompute"] = None  # resolved in the worker, on its device (see default_opts)
    for item in items:
        name, _, value = item.partition("=")
        if name == "default":
            continue
        if name == "chunk":
            opts["chunk"] = int(value) if value else 1024
        elif name == "recompute":
            opts["recompute"] = value.strip().lower() not in ("0", "false", "no", "off")
        elif name in ("checkpointing", "ckpt"):
            opts["checkpointing"] = True
        elif name in ("compile", "alloc", "thp"):
            opts[name] = True
        else:
            raise SystemExit(f"--ours-opts: unknown option {item!r} "
                             f"(default, chunk[=N], recompute[=0|1], checkpointing, compile, alloc, thp)")
    return opts


def parse_env_opts(text, flag):
    opts = {"alloc": False, "thp": False}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item not in opts:
            raise SystemExit(f"{flag}: unknown option {item!r} (alloc, thp)")
        opts[item] = True
    return opts


def default_opts(opts, device, block_size):
    """--ours-opts default: the loss chunk and attention recompute train.py picks with no flags (harness/run.py)."""
    from harness.run import pick_attention_recompute, pick_loss_chunk

    opts = dict(opts)
    if opts["chunk"] is None:
        opts["chunk"], opts["chunk_why"] = pick_loss_chunk(None, device)
    if opts["recompute"] is None:
        opts["recompute"], opts["recompute_why"] = pick_attention_recompute(None, device, opts["checkpointing"],
                                                                              block_size)
    return opts


def opts_label(opts):
    parts = [f"chunk={opts['chunk']}" if opts["chunk"] else "no chunk"] + \
        [k for k in ("recompute", "checkpointing", "compile", "alloc", "thp") if opts.get(k)]
    text = ", ".join(parts)
    return f"default ({text})" if opts.get("default") else text


def env_label(env):
    return ", ".join(k for k in ("alloc", "thp") if env.get(k)) or "-"


def side_precision(args, side):
    asked = (args.ours_precision if side == "ours" else args.hf_precision) or args.precision
    if asked == "default":  # each side's own default: train.py's auto, the Trainer's fp32
        return "auto" if side == "ours" else "fp32"
    return asked


# --- one side, in its own process -----------------------------------------------------

def tune_malloc():
    """glibc malloc: big blocks from the heap, kept for reuse (see the module docstring: alloc)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return bool(ok)


def shape_of(name):
    from gpt2.config import PRESETS, GPT2Config

    if name == "tiny":
        return GPT2Config(n_layer=2, n_head=2, n_embd=64)
    return PRESETS[name]


def hf_model(cfg, device):
    import transformers
    from transformers import GPT2Config as HFConfig, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()  # no notes about unused config fields
    hf_cfg = HFConfig(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.resid_pdrop,
                      embd_pdrop=cfg.embd_pdrop, attn_pdrop=cfg.attn_pdrop)
    return GPT2LMHeadModel(hf_cfg).to(device)


def build(side, args, device, opts=None):
    """(model, loss_fn(x) -> loss) for one side, weights random."""
    import torch

    cfg = shape_of(args.model_config).with_dropout(args.dropout)
    torch.manual_seed(args.seed)
    if side == "ours":
        from gpt2.model import GPT2

        model = GPT2(cfg, checkpointing=opts["checkpointing"], loss_chunk=opts["chunk"],
                     attention_recompute=opts["recompute"]).to(device)
        step_model = torch.compile(model) if opts["compile"] else model

        def loss_fn(x):
            return step_model(x, labels=x)[1]
    else:
        model = hf_model(cfg, device)

        def loss_fn(x):
            return model(input_ids=x, labels=x).loss
    return model, loss_fn


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def hf_eval(model, blocks, batch_size, device, precision):
    """What Trainer.evaluate does per batch for run_clm: loss + logits, argmax; one sync at the end."""
    import torch

    from gpt2.precision import autocast

    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for s in range(0, len(blocks), batch_size):
            x = torch.from_numpy(blocks[s:s + batch_size]).to(device)
            with autocast(device, precision):
                out = model(input_ids=x, labels=x)
            preds = out.logits.argmax(dim=-1)  # run_clm's preprocess_logits_for_metrics
            loss_sum += out.loss.double() * len(x)
            correct += (preds[:, :-1] == x[:, 1:]).sum()
    return float(loss_sum), int(correct)


def run_worker(side, args):
    env = args.opts if side == "ours" else args.hf_env
    if env["thp"]:  # read by PyTorch at its first CPU allocation: set before torch is imported
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    malloc_tuned = tune_malloc() if env["alloc"] else None

    import numpy as np
    import torch

    from gpt2.precision import autocast, make_scaler, pick_device, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision, precision_why = resolve_precision(side_precision(args, side), device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
        torch.backends.cudnn.allow_tf32 = True

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    cfg = shape_of(args.model_config)
    T = args.block_size
    result = {"side": side, "precision": precision, "precision_why": precision_why, "device": str(device),
              "block_size": T, "threads": torch.get_num_threads(),
              "env": {"alloc": malloc_tuned, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}}
    if side == "trainer":
        return run_trainer(args, device, precision, result)
    opts = default_opts(args.opts, device, args.block_size) if side == "ours" else None
    model, loss_fn = build(side, args, device, opts)
    result["params"] = sum(p.numel() for p in model.parameters())
    if side == "ours":
        result["opts"] = opts_label(opts)
        result["opts_resolved"] = opts
    else:
        import transformers

        result["attn_implementation"] = model.config._attn_implementation
        result["transformers"] = transformers.__version__

    B = args.batch_size
    if side == "ours" and args.ours_batch_size:
        if args.ours_batch_size == "auto":
            from harness.batch import find_micro_batch, make_probe

            if not cuda:
                raise SystemExit("--ours-batch-size auto needs a CUDA device")
            reserve = result["params"] * 4 * 2  # AdamW's two moments, allocated at the first step
            B = find_micro_batch(make_probe(model, T, device, precision, reserve), start=1, limit=args.auto_limit)
            result["auto_batch"] = True
        else:
            B = int(args.ours_batch_size)
    result["batch_size"] = B

    # Fused AdamW, CPU included: the Trainer's default since torch 2.8 ("adamw_torch_fused"),
    # and the one gpt2/trainer.py uses.
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0, fused=device.type in ("cuda", "cpu"))
    scaler = make_scaler(device, precision)
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = [torch.randint(0, cfg.vocab_size, (B, T), generator=gen) for _ in range(args.warmup + args.steps)]

    def train_step(x):
        x = x.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = loss_fn(x)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        result["rss_before_train_mb"] = current_rss_mb()
    times, warm, losses = [], [], []
    try:
        for i, x in enumerate(batches):
            sync()
            t0 = time.perf_counter()
            losses.append(train_step(x))
            sync()
            (times if i >= args.warmup else warm).append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        result["error"] = f"out of memory at micro-batch {B}"
        return result
    finish_train(result, args, cfg, times, warm, B, T)
    result["train_loss_last"] = float(losses[-1])
    result["peak_train_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
    if cuda:
        result["mfu"] = result["train_tokens_per_s"] * result["flops_per_token"] / (args.peak_tflops * 1e12)
        result["gpu"] = torch.cuda.get_device_name(device)

    if args.eval_batches > 0:
        del opt, batches  # evaluation does not need them
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        eb = args.eval_batch_size
        blocks = np.random.default_rng(args.seed + 2).integers(0, cfg.vocab_size, size=(eb * (args.eval_batches + 1), T))
        if side == "ours":
            from gpt2.evaluation import evaluate

            def run_eval(b):
                evaluate(model, b, eb, device, precision)
        else:
            def run_eval(b):
                hf_eval(model, b, eb, device, precision)
        try:
            run_eval(blocks[:eb])  # warm-up batch, untimed
            eval_times = []
            for s in range(eb, len(blocks), eb):  # one batch at a time, for the median
                sync()
                t0 = time.perf_counter()
                run_eval(blocks[s:s + eb])
                sync()
                eval_times.append(time.perf_counter() - t0)
            result["eval_times_s"] = eval_times
            result["eval_samples_per_s"] = eb / statistics.median(eval_times)
            if cuda:
                result["peak_eval_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        except torch.OutOfMemoryError:
            result["eval_error"] = f"out of memory at eval batch {eb}"
    return result


def finish_train(result, args, cfg, times, warm, B, T):
    """Throughput from the timed steps (their median), the warm-up steps kept for the compile time."""
    med = statistics.median(times)
    result["step_times_s"] = times
    result["warmup_times_s"] = warm
    # The median step: one step slowed down by another process does not move it.
    result["train_tokens_per_s"] = B * T / med
    result["train_samples_per_s"] = B / med
    if warm:  # the first step allocates AdamW's state, warms the caches, and compiles (--ours-opts compile)
        result["first_step_over_median_s"] = warm[0] - med
    n_flop_params = result["params"] - cfg.n_positions * cfg.n_embd  # all but the position embeddings
    result["flops_per_token"] = 6 * n_flop_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T


def run_trainer(args, device, precision, result):
    """The real transformers.Trainer, its defaults, over random blocks; a callback times the steps."""
    import torch
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cfg = shape_of(args.model_config)
    torch.manual_seed(args.seed)
    model = hf_model(cfg.with_dropout(args.dropout), device)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["attn_implementation"] = model.config._attn_implementation
    result["transformers"] = transformers.__version__
    B, T = args.batch_size, args.block_size
    result["batch_size"] = B
    n_steps = args.warmup + args.steps
    gen = torch.Generator().manual_seed(args.seed + 1)
    data = torch.randint(0, cfg.vocab_size, (n_steps * B, T), generator=gen)

    class Blocks(torch.utils.data.Dataset):  # run_clm's dataset: input_ids, labels = input_ids
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return {"input_ids": data[i], "labels": data[i]}

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.steps, self.ends = None, [], []

        def on_step_begin(self, *a, **k):
            self.begin = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                now = time.perf_counter()
            self.steps.append(now - self.begin)
            self.ends.append(now)

    timer = StepTimer()
    out = tempfile.mkdtemp(prefix="bench_trainer_")
    targs = TrainingArguments(output_dir=out, per_device_train_batch_size=B, max_steps=n_steps,
                              use_cpu=device.type == "cpu", report_to=[], save_strategy="no",
                              logging_steps=10**9, disable_tqdm=True, seed=args.seed,
                              bf16=precision == "bf16", fp16=precision == "fp16")
    result["optim"] = str(targs.optim.value if hasattr(targs.optim, "value") else targs.optim)
    trainer = Trainer(model=model, args=targs, train_dataset=Blocks(), callbacks=[timer])
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        result["rss_before_train_mb"] = current_rss_mb()
    try:
        out_metrics = trainer.train()
    except torch.OutOfMemoryError:
        result["error"] = f"out of memory at micro-batch {B}"
        return result
    result["trainer_train_runtime_s"] = out_metrics.metrics.get("train_runtime")
    result["train_loss_mean"] = out_metrics.metrics.get("train_loss")
    times, warm = timer.steps[args.warmup:], timer.steps[:args.warmup]
    finish_train(result, args, cfg, times, warm, B, T)
    cycles = [b - a for a, b in zip(timer.ends[args.warmup:], timer.ends[args.warmup + 1:])]
    if cycles:  # on_step_end to on_step_end: the step and everything between two steps
        result["cycle_times_s"] = cycles
        result["cycle_tokens_per_s"] = B * T / statistics.median(cycles)
    result["peak_train_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" \
        else peak_rss_mb()
    if device.type == "cuda":
        result["mfu"] = result["train_tokens_per_s"] * result["flops_per_token"] / (args.peak_tflops * 1e12)
        result["gpu"] = torch.cuda.get_device_name(device)
    return result


# --- the parent: run the sides, print the table ---------------------------------------

def run_side(side, argv):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", side, "--result-file", path]
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            return {"side": side, "error": f"the {side} process failed (exit {proc.returncode})"}
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def median_of(r, key):
    return statistics.median(r[key]) if r.get(key) else None


NAMES = {"ours": "ours", "hf": "transformers", "trainer": "Trainer"}


def table(args, results):
    sides = [s for s in args.sides if s in results]
    any_r = next((results[s] for s in sides if "device" in results[s]), {})
    cuda = any_r.get("device", "").startswith("cuda")
    mem = "peak GPU memory allocated (MB)" if cuda else "peak resident memory (MB)"
    rows = [
        ("precision", "precision", "s", False),
        ("micro-batch", "batch_size", "d", False),
        ("train tokens/s", "train_tokens_per_s", ",.0f", True),
        ("train samples/s", "train_samples_per_s", ",.3f", True),
        ("step time, median (s)", lambda r: median_of(r, "step_times_s"), ".3f", False),
        ("first step - median (s)", "first_step_over_median_s", ".2f", False),
        (mem, "peak_train_mb", ",.0f", True),
    ]
    if not cuda:
        rows.append(("  of which before training (MB)", "rss_before_train_mb", ",.0f", False))
    rows.append(("eval samples/s", "eval_samples_per_s", ",.2f", True))
    if cuda:
        rows.append(("peak eval memory (MB)", "peak_eval_mb", ",.0f", True))
        rows.append(("MFU (%)", lambda r: 100 * r["mfu"] if "mfu" in r else None, ".1f", True))
    rows.append(("train loss (last step)", "train_loss_last", ".4f", False))

    where = any_r.get("gpu") or f"{platform.processor() or platform.machine()} cpu, {os.cpu_count()} cores"
    desc = []
    if "ours" in results:
        desc.append(f"ours: {results['ours'].get('opts', opts_label(args.opts))}")
    for s in ("hf", "trainer"):
        r = results.get(s, {})
        if "transformers" in r:
            desc.append(f"{NAMES[s]}: transformers {r['transformers']} ({r['attn_implementation']} attention"
                        + (f", optim {r['optim']}" if "optim" in r else "")
                        + (f", {env_label(args.hf_env)}" if any(args.hf_env.values()) else "") + ")")
    lines = [f"GPT-2 {args.model_config} ({fmt(any_r.get('params'), ',')} params, random weights), "
             f"block {args.block_size}, {any_r.get('device')} ({where}, {any_r.get('threads')} threads), "
             f"{args.steps} timed step(s) after {args.warmup} warm-up, best of {args.rounds} round(s)",
             "; ".join(desc)]
    others = [s for s in sides if s != "ours"] if "ours" in sides else []
    w = 34
    head = f"{'':{w}}" + "".join(f" {NAMES[s]:>14}" for s in sides) + "".join(f" {'ours / ' + s:>14}" for s in others)
    lines.append(head)
    for name, key, spec, show_ratio in rows:
        get = key if callable(key) else (lambda r, k=key: r.get(k))
        vals = {s: get(results[s]) for s in sides}
        line = f"{name:{w}}" + "".join(f" {fmt(vals[s], spec):>14}" for s in sides)
        for s in others:
            r = ratio(vals["ours"], vals[s]) if show_ratio else None
            line += f" {fmt(r, '.2f') + 'x' if r else '':>14}"
        lines.append(line)
    for side in sides:
        for key in ("error", "eval_error"):
            if key in results[side]:
                lines.append(f"{side}: {results[side][key]}")
    if "trainer" in results and results["trainer"].get("cycle_tokens_per_s"):
        lines.append(f"Trainer, on_step_end to on_step_end (collation included): "
                     f"{results['trainer']['cycle_tokens_per_s']:,.0f} tokens/s")
    if cuda:
        fpt = any_r.get("flops_per_token")
        lines.append(f"MFU = tokens/s x (6N + 12 L H Q T) / peak; {fmt(fpt, ',')} FLOPs per token "
                     f"(N = all parameters but the position embeddings), peak {args.peak_tflops:g} TFLOP/s")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args.worker, args)
        with open(args.result_file, "w") as f:
            json.dump(result, f)
        return 0
    best, rounds = {}, {s: [] for s in args.sides}
    for _ in range(args.rounds):
        for side in args.sides:
            r = run_side(side, argv)
            rounds[side].append(r)
            if side not in best or r.get("train_tokens_per_s", 0) > best[side].get("train_tokens_per_s", 0):
                best[side] = r
    text = table(args, best)
    print(text)
    if args.json_out:
        import torch

        ours = best.get("ours", {})
        summary = {
            "config": {k: v for k, v in vars(args).items() if k not in ("worker", "result_file", "json_out")},
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": cpu_name(), **{s: best.get(s) for s in args.sides},
            "ratios": {f"ours/{s}": {k: ratio(ours.get(k), best[s].get(k))
                                     for k in ("train_tokens_per_s", "train_samples_per_s", "peak_train_mb",
                                               "eval_samples_per_s")}
                       for s in args.sides if s != "ours" and "ours" in best},
            "rounds": {s: [{k: r.get(k) for k in ("train_tokens_per_s", "peak_train_mb", "step_times_s",
                                                   "warmup_times_s", "eval_samples_per_s", "error")}
                           for r in rs] for s, rs in rounds.items()},
            "table": text,
        }
        if "ours" in best and "hf" in best:  # the keys of the earlier files (benchmarks/results/h200)
            summary["ratios"].update(summary["ratios"]["ours/hf"])
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0 if all("error" not in r for r in best.values()) else 1


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
