"""Setting up a training run: from the command-line flags to what the loop needs.

train.py reads parse -> set up -> train -> save. This module is the "set up": it
reads the parsed flags (never writes them) and returns one `Run` that holds the
model, the data, the TrainConfig, and every decision taken on the way, with the
reason where there was a choice:

    dist, device   distributed.setup: a single process, or one of torchrun's
    precision      precision.resolve: what --precision auto means on this machine; and
                   precision.eval_precision: evaluations in fp32 under auto
    block size     --block-size, else the model's context (at most 1024)
    model          weights.load_checkpoint, the memory options given to its constructor
                   (some depend on the block size); with --lora, adapters added and
                   everything else frozen (lora.py)
    tokenizer      the checkpoint's own tokenizer.json or vocab.json + merges.txt, else
                   GPT-2's (tokenizer.py); the run directory carries the same files on
    blocks         data.build_datasets: the text cut into blocks of block_size tokens
    micro-batch    batch.choose_batch: --batch-size auto and --effective-batch
    cfg            the TrainConfig: every number the loop needs

Under torchrun, rank 0 downloads the model and tokenizes the text first while the
other processes wait; then they find both on disk (two processes appending to the
same download would corrupt it, and tokenizing N times is wasted time).
"""

import os
import shutil
import sys
from dataclasses import dataclass, replace

import numpy as np
import torch

from gpt2 import distributed
from .batch import choose_batch, make_probe
from gpt2.config import GPT2Config
from .datasets import build_datasets, default_cache_dir, validation_dataset
from gpt2.errors import UserError
from .hub import ALIASES, resolve
from .report import format_lr
from . import scratch
from gpt2.lora import add_lora, trainable_parameters
from gpt2.model import GPT2
from gpt2.precision import eval_note, eval_precision, resolve_precision, use_tf32
from gpt2.tokenizer import Tokenizer
from gpt2 import settings
from gpt2.trainer import TrainConfig, step_counts
from gpt2.weights import load_checkpoint


# Rows of the LM head computed at once by default on the CPU (loss.py). Measured with
# benchmarks/bench.py: see docs/performance.md.
DEFAULT_LOSS_CHUNK = 1024
# On the CPU, attention's T x T part is recomputed in backward (model.py) by default from
# blocks of this many tokens on. The T x T tensors a block keeps grow with T squared, the
# rest of its activations with T: for GPT-2's 64-wide heads the first outweigh the rest
# from about 300 (bf16) to 470 (fp32) tokens. At block 1024 recomputing saves 3.2 GB
# (124M, micro-batch 2, fp32) for 13 % of the speed; at block 256 it saves 0.15 GB for
# 5-8 %, so it is done there only with --lora (pick_attention_recompute). See
# docs/performance.md.
CPU_ATTENTION_RECOMPUTE_FROM = 512


@dataclass
class Run:
    model: GPT2
    model_dir: str           # where the pretrained files were found (or downloaded to)
    tokenizer: Tokenizer
    train_blocks: np.ndarray  # (N, block_size) token ids
    val_blocks: np.ndarray | None
    data_info: dict          # where the blocks came from (data.build_datasets)
    cfg: TrainConfig
    device: torch.device
    dist: distributed.Dist
    notes: list              # the decisions taken, one line each, printed in the run header
    saved_config: GPT2Config | None = None  # the config.json a saved model gets (its dropout: the model's own)


def setup(args, lr) -> Run:
    """The model, its data and the TrainConfig of one run at learning rate `lr`."""
    dist, device = distributed.setup(args.device)
    check_compiler(args.compile)
    precision, why = resolve_precision(args.precision, device)
    use_tf32(device)
    loss_chunk, chunk_why = pick_loss_chunk(args.loss_chunk, device)
    if not dist.is_main:
        dist.barrier()  # rank 0 downloads and tokenizes first (see the module docstring)
    if args.from_scratch:  # a new random model, its shape from the flags (harness/scratch.py)
        model_dir, config = None, scratch.config(args)
    else:
        model_dir = resolve(args.model, args.weights_dir)  # a name is downloaded into weights/ (hub.py)
        config = GPT2Config.from_json(os.path.join(model_dir, "config.json"))  # read before the model: it decides
    block_size = pick_block_size(args.block_size, config.n_positions)
    recompute, recompute_why = pick_attention_recompute(args.attention_recompute, device, args.checkpointing,
                                                        block_size, lora=bool(args.lora))
    options = dict(checkpointing=args.checkpointing, loss_chunk=loss_chunk, attention_recompute=recompute)
    if args.from_scratch:
        model, model_dir, model_note = scratch.build(args, **options)
    else:
        model = load_checkpoint(model_dir, dropout=args.dropout, config=config, **options)
        model_note = f"model: {args.model}" + (f" ({model_dir})" if model_dir != args.model else "")
    tokenizer = Tokenizer.for_checkpoint(model_dir, model.config.vocab_size)
    train_blocks, val_blocks, info = load_data(args, tokenizer, block_size)
    if dist.is_main:
        dist.barrier()  # the files are ready: let the others go
        print(info["summary"])
    if args.lora:
        torch.manual_seed(args.seed)  # the adapters' random init (A) is part of the run: the seed decides it
        add_lora(model, args.lora, args.lora_alpha, args.lora_dropout, args.lora_targets)
    micro, accum, batch_note = choose_micro_batch(args, model, train_blocks.shape[1], precision, dist, device)
    cfg = train_config(args, lr, precision, micro, accum, len(train_blocks), dist.world_size,
                       eval_precision(args.precision, precision))
    if dist.is_main and cfg.eval_strategy != "no" and val_blocks is None:
        print("warning: evaluations during training asked for, but there is no validation data "
              "(--validation-split 0 and no --validation-file): none will run", file=sys.stderr)
    notes = [model_note,
             f"precision {precision}: {why}{eval_note(precision, cfg.eval_precision)}",
             f"loss: {chunk_why}", f"attention: {recompute_why}",
             *training_notes(args, model, cfg, step_counts(len(train_blocks), cfg, dist.world_size))]
    notes += [batch_note] if batch_note else []
    notes += [tokenizer.describe()]
    if args.from_scratch:  # the first sanity check: a random model's loss is about ln(vocabulary)
        notes += [scratch.step0_note(model, train_blocks, micro)]
    # config.json of what this run saves: the model's own dropout, not this run's --dropout
    # (a training choice, kept in run_args.json; docs/lifecycle.md).
    return Run(model, model_dir, tokenizer, train_blocks, val_blocks, info, cfg, device, dist, notes, config)


def training_notes(args, model, cfg, counts) -> list[str]:
    """The header's lines on what training will do: parameters, rate and schedule, logging, output."""
    trainable, total = trainable_parameters(model)
    kwargs = "".join(f" {k}={v:g}" for k, v in cfg.lr_scheduler_kwargs.items())
    auto = " (auto: about 50 points on the loss curve; --log-every N to change)" if args.log_every == "auto" else ""
    return [f"parameters: {trainable:,} trainable of {total:,}" + (f" (LoRA rank {args.lora})" if args.lora else ""),
            f"learning rate {format_lr(cfg.lr)}, {cfg.lr_scheduler}{kwargs} schedule, {counts.warmup_steps} warm-up "
            f"steps, "
            f"weight decay {cfg.weight_decay:g}",
            f"loss logged every {cfg.log_every} steps{auto}",
            f"output: {os.path.join(os.path.normpath(args.out), '')}"]


def auto_log_every(asked, total_steps) -> int:
    """--log-every: N as given; auto: about 50 log lines whatever the run's length (at least every step).

    run_clm's fixed 500 logs nothing at all in a run of fewer steps: no curve to draw.
    """
    return asked if asked != "auto" else max(1, total_steps // 50)


def check_compiler(compile_asked):
    """--compile: torch.compile writes C++ (on the CPU) or Triton code and compiles it; without
    a compiler it fails at the first step, after the model and data were loaded. Said now."""
    if not compile_asked:
        return
    candidates = [os.environ.get("CXX"), os.environ.get("CC"), "g++", "c++", "clang++", "gcc", "cc"]
    if not any(shutil.which(c) for c in candidates if c):
        raise UserError("--compile needs a C/C++ compiler (torch.compile compiles the code it generates): "
                        "install g++ (or set CXX), or leave --compile out")


def load_data(args, tokenizer, block_size):
    """(training blocks, validation blocks or None, info): the text cut into blocks, capped as asked."""
    if args.do_eval and not args.do_train and args.validation_file:  # evaluating only: no training text
        val, info = validation_dataset(args.validation_file, block_size, tokenizer,
                                       args.cache_dir or default_cache_dir(), keep_linebreaks=args.keep_linebreaks)
        val = val[:args.max_eval_samples] if args.max_eval_samples else val
        return np.zeros((0, block_size), dtype=val.dtype), val, {**info, "validation_blocks": len(val)}
    train, val, info = build_datasets(args.train_file, args.validation_file, args.validation_split, block_size,
                                      tokenizer, args.cache_dir or default_cache_dir(),
                                      keep_linebreaks=args.keep_linebreaks)
    if args.max_train_samples:  # run_clm's caps: the first N blocks
        train = train[:args.max_train_samples]
    if val is not None and args.max_eval_samples:
        val = val[:args.max_eval_samples]
    if args.do_train and not args.do_eval:
        val = None  # run_clm's --do_train alone: no evaluation at all
    return train, val, {**info, "train_blocks": len(train), "validation_blocks": 0 if val is None else len(val)}


def pick_attention_recompute(asked, device, checkpointing, block_size, lora=False):
    """(recompute attention's T x T part in backward?, why); see model.py.

    Only the CPU keeps those tensors (with attention dropout it has no fused kernel),
    and --checkpointing recomputes whole blocks anyway. The recomputation is exact
    (the same dropout masks), and applies only where attention dropout is on. Below
    CPU_ATTENTION_RECOMPUTE_FROM tokens it is done with --lora only: LoRA is chosen to
    save memory, and with the weights frozen the T x T tensors are a large part of what
    is left (gpt2-medium, 1 x 256, fp32: a LoRA run's peak 3,201 -> 2,791 MB).
    """
    if asked is not None:
        return asked, f"--attention-recompute {'on' if asked else 'off'}"
    if checkpointing:
        return False, "whole blocks recomputed (--checkpointing)"
    if device.type != "cpu":
        return False, "fused kernel (no T x T kept)"
    if block_size >= CPU_ATTENTION_RECOMPUTE_FROM:
        return True, (f"T x T part rebuilt in backward from q, k and the dropout mask (at block {block_size} the "
                      f"CPU's T x T tensors are most of a block's activations; --attention-recompute false keeps them)")
    if lora:
        return True, ("T x T part rebuilt in backward from q, k and the dropout mask (--lora: memory first; "
                      "--attention-recompute false keeps them)")
    return False, (f"the T x T part kept for backward (small at block {block_size}; rebuilt by default from "
                   f"block {CPU_ATTENTION_RECOMPUTE_FROM}, or with --lora)")


def pick_loss_chunk(asked, device):
    """(rows per chunk of the LM head + loss, why); see loss.py for what the chunks save."""
    if asked is not None:
        return asked, f"--loss-chunk {asked}" if asked else "--loss-chunk 0: the plain cross-entropy"
    if device.type == "cpu":
        return DEFAULT_LOSS_CHUNK, f"the LM head and loss {DEFAULT_LOSS_CHUNK} positions at a time (faster " \
                                   f"and smaller on the CPU; --loss-chunk 0 turns it off)"
    return 0, "the plain cross-entropy (on a GPU the chunked loss saves memory but is slower: --loss-chunk 1024)"


def pick_block_size(asked, n_positions) -> int:
    block_size = asked or min(1024, n_positions)
    if block_size > n_positions:
        raise UserError(f"--block-size {block_size} is above the model's context of {n_positions} positions")
    return block_size


def choose_micro_batch(args, model, block_size, precision, dist, device):
    """(micro-batch, accumulation, a note or None) for --batch-size, --grad-accum, --effective-batch."""
    try_step = None
    if args.batch_size == "auto" and device.type == "cuda":
        # While probing, set aside what training adds later: AdamW's two fp32 moments
        # per parameter, and under torchrun DDP's gradient buckets (one more copy).
        n_bytes = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
        try_step = make_probe(model, block_size, device, precision, n_bytes * (2 + dist.enabled))
    log = (lambda msg: print(f"--batch-size auto: {msg}")) if dist.is_main else None
    micro, accum, note = choose_batch(args.batch_size, args.grad_accum, args.effective_batch, dist, try_step, log)
    if try_step is not None:
        torch.cuda.reset_peak_memory_stats(device)  # the reported peak is training's, not the probes'
    return micro, accum, note


def train_config(args, lr, precision, batch_size, grad_accum, n_blocks, world_size, eval_precision=None):
    """The TrainConfig: every setting as its flag gives it (gpt2/settings.py), and those decided
    here on top: the rate of this run, the micro-batch, the precision, run_clm's strategies."""
    decided = dict(lr=lr, batch_size=batch_size, grad_accum=grad_accum, precision=precision,
                   eval_precision=eval_precision, eval_strategy=eval_strategy(args), save_strategy=save_strategy(args),
                   save_every=args.save_every if args.save_every > 0 else 500, log_every=1,
                   fsdp=args.fsdp or args.offload, offload=args.offload)
    cfg = TrainConfig(**settings.from_flags(args, **decided))
    log_every = auto_log_every(args.log_every, step_counts(n_blocks, cfg, world_size).total_steps)
    return replace(cfg, log_every=log_every, eval_every=args.eval_every or log_every)


def eval_strategy(args) -> str:
    """no, steps or epoch: evaluations during training (the final one is not one of them)."""
    if args.do_train and not args.do_eval:
        return "no"
    return args.eval_strategy or ("steps" if args.eval_every else "no")


def save_strategy(args) -> str:
    """no, steps or epoch: resumable states during training (Ctrl-C saves one anyway)."""
    return args.save_strategy or ("steps" if args.save_every > 0 else "no")


def describe(args, run: Run, total_steps: int) -> dict:
    """run_args.json: the flags, and what they resolved to, for evaluate.py and the table of runs."""
    # Absolute paths, so that evaluate.py finds the data from any directory.
    paths = {k: os.path.abspath(getattr(args, k)) for k in ("train_file", "validation_file") if getattr(args, k)}
    local = os.path.isdir(args.model) and args.model not in ALIASES
    cfg = run.cfg
    return {**vars(args), **settings.record(cfg), **paths,
            "model": scratch.name(args) if args.from_scratch else os.path.abspath(args.model) if local else args.model,
            "block_size": run.train_blocks.shape[1], "world_size": run.dist.world_size,
            "effective_batch": cfg.batch_size * cfg.grad_accum * run.dist.world_size,
            "total_steps": total_steps, "data": {k: v for k, v in run.data_info.items() if k != "summary"}}
