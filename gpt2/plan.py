"""How much memory will training take? A plan, before anything runs.

`train.py --plan` prints `format_plan`: the peak memory of a training step, part by
part, for a model's shape (config.py) and the run's options, and which options let a
larger micro-batch fit. Nothing is built, no weight is read: every number here is a
formula of the shape, checked against what PyTorch really keeps (tests/test_plan.py)
and against real runs (benchmarks/plan_check.py). MB = 2^20 bytes, GB = 2^30.

1. Weights, gradients, AdamW: 16 bytes per parameter

Full fine-tuning with AdamW keeps, for every parameter of the model:

     4 bytes   the weight, fp32 (under bf16/fp16 autocast too: autocast multiplies
               16-bit copies, the weights themselves stay fp32)
     4 bytes   its gradient, fp32, from the first backward until zero_grad()
     8 bytes   AdamW's two running averages, of the gradient and of its square, fp32
    --------
    16 bytes   before a single activation is stored

The LM head is wte itself (model.py), so it counts once. For the released sizes
(LoRA: section 5):

    model         parameters     weights + gradients     + AdamW   LoRA r=8:   LoRA r=8:
                                4 B each    8 B each   16 B each   trainable   all state
    distilgpt2         81.9M     0.31 GB     0.61 GB     1.22 GB       0.59M     0.31 GB
    gpt2              124.4M     0.46 GB     0.93 GB     1.85 GB       1.18M     0.48 GB
    gpt2-medium       354.8M     1.32 GB     2.64 GB     5.29 GB       3.15M     1.37 GB
    gpt2-large        774.0M     2.88 GB     5.77 GB    11.53 GB       5.90M     2.97 GB
    gpt2-xl         1,557.6M     5.80 GB    11.61 GB    23.21 GB       9.83M     5.95 GB

So gpt2 needs 1.9 GB before it sees a token, and gpt2-xl 23 GB: more than a 24 GB GPU
has left for anything else. These numbers are exact: they are the sizes of tensors.

2. Activations: what forward keeps for backward

To make the gradients, backward needs tensors from forward: the input of every matmul
(d loss/d W = grad^T @ input), GELU's input, each LayerNorm's input and statistics,
the dropout masks, what attention needs. Every block keeps its own, for every token of
the micro-batch: the total grows as micro-batch x block size x layers. One block of
gpt2 keeps, per token:

    gpt2 (C = 768, nh = 12), T = 1024: bytes per token                          CUDA bf16   CPU fp32
    ln_1: input (fp32), mean, 1/std                                                 3,080      3,080
    c_attn: input                                                                   1,536      3,072
    attention: q, k, v                                                              4,608      9,216
    attention: T x T probabilities, mask, dropped (math) / log-sum-exp (fused)         48    147,456
    attention output = attn c_proj's input                                          1,536      3,072
    dropout mask after attention                                                      768      3,072
    ln_2: input (fp32), mean, 1/std                                                 3,080      3,080
    c_fc: input                                                                     1,536      3,072
    GELU: input                                                                     6,144     12,288
    mlp c_proj: input (GELU's output)                                               6,144     12,288
    dropout mask after the MLP                                                        768      3,072
    total                                                                          29,248    202,768

(CUDA's columns come from the fused kernels; the CPU's are what PyTorch's autograd
saves, counted by the tests.) Under autocast the matmul outputs are 16-bit, but the
residual stream and the LayerNorms stay fp32. The T x T line is attention's matrix:
on CUDA, scaled_dot_product_attention runs a fused kernel (flash, or
memory-efficient in fp32) that never stores it and keeps 4 bytes of log-sum-exp per
head and token instead (with dropout, the random generator's state, to redraw the
same mask). The CPU has a fused kernel too, but it cannot drop out: with GPT-2's
attention dropout of 0.1, PyTorch falls back to its "math" path, which keeps the
(B, nh, T, T) probabilities, the dropout mask and the dropped probabilities, all
fp32: 12 x nh x T bytes per token, growing with T. At T = 1024 that is 147 KB per
token and block, three times the rest. With --dropout 0 the fused CPU kernel runs;
model.py's attention_recompute (--attention-recompute, train.py's default on the
CPU from block 512 and with --lora) keeps attention's input (fp32) and the dropout
mask as bools, 1 byte per entry, and rebuilds the rest in backward (attention.py). (And
the CPU's dropout keeps its mask as fp32 numbers, CUDA's as bools.) For all 12 blocks:

    gpt2, B x T                   CUDA bf16      CPU fp32, dropout 0    CPU fp32, dropout 0.1      CUDA, checkpointing
    1 x 256                           87 MB                   145 MB                   272 MB                    10 MB
    1 x 1024                         347 MB                   580 MB                 2,382 MB                    40 MB
    8 x 1024                       2,772 MB                 4,638 MB                19,058 MB                   318 MB

Autocast also keeps the 16-bit copy of each weight it multiplies by (backward needs
it for d loss/d input): 2 bytes per matmul parameter, once per forward.

3. The LM head and the loss

The last matmul scores every position against all V = 50,257 tokens: (B, T, V)
logits, 201 KB per token in fp32, seven times what a bf16 block keeps. The plain path
makes the logits (16-bit under autocast, then an fp32 copy for the loss), the loss
keeps its log-softmax (fp32), and its backward makes the gradients of both: at the
head's backward, three fp32 (B, T, V) tensors live at once. For gpt2 at 8 x 1024 on
CUDA that is 4.6 GB, more than all twelve blocks keep (2.7 GB). The chunked loss (loss.py,
--loss-chunk) computes the gradients right away, a chunk of rows at a time, and keeps
only d loss/d hidden (B, T, C) and d loss/d W (V, C), fp32; a (chunk, V) block of
logits lives one chunk at a time (two at the turn from one chunk to the next).

4. Checkpointing

--checkpointing keeps only each block's input (4 x C bytes per token and block, fp32)
and recomputes the block in backward, one block at a time: the activations shrink
from layers x (a whole block) to layers x (its input) + one block, for about a third
more compute. With the chunked loss as well, almost nothing of size B x T x V or
B x T x layers x block remains, and the micro-batch can grow several times:

    CUDA bf16       options, micro-batch 8 x 1024          peak   largest micro-batch in 24 GB  in 80 GB
    gpt2            plain                                9.0 GB                             24        85
    gpt2            chunked loss 1024                    5.1 GB                             63       221
    gpt2            checkpointing                        6.4 GB                             36       127
    gpt2            chunked loss 1024 + checkpointing    2.7 GB                            275       963
    gpt2-medium     plain                               16.5 GB                             13        51
    gpt2-medium     chunked loss 1024                   12.7 GB                             20        82
    gpt2-medium     checkpointing                        9.5 GB                             29       112
    gpt2-medium     chunked loss 1024 + checkpointing    6.3 GB                            127       487

(Largest micro-batch: the plan's own answer, `largest_micro_batch`.)

5. LoRA

With --lora R the model's weights are frozen and small adapters A (R, in) and B
(out, R) are trained on the targeted matmuls (lora.py): no gradient and no AdamW
state for the frozen weights, whose 4 bytes remain; 16 bytes per adapter parameter,
a million or so. The activations hardly change: the gradient must still flow down
through every frozen layer to reach the adapters of the blocks below, so each block
keeps what it kept (the adapters need the matmul inputs; GELU and the LayerNorms
need theirs). What goes: the inputs of frozen matmuls without an adapter, the LM
head's d loss/d W (wte is frozen), and what comes before the first adapter (the
embeddings, block 0's ln_1). The adapters add a (B, T, R) tensor each (and with
--lora-dropout, a mask of their input's size). Planned peaks:

    CUDA bf16, micro-batch 4 x 1024, chunked loss 1024 + checkpointing     full       LoRA r=8
    gpt2-medium                                                            5.9 GB      2.5 GB
    gpt2-large                                                            12.1 GB      4.4 GB
    gpt2-xl                                                               23.9 GB      7.9 GB

6. The peak, moment by moment

The figure is the one the run reports as train_peak_memory_mb. On CUDA it is
torch.cuda.max_memory_allocated: the largest total of live tensors (the model is
loaded on the CPU, so loading does not count). On the CPU it is the process's peak
resident memory, getrusage's ru_maxrss: everything the process holds, Python, torch
and the tokenizer included ("process baseline", a measured constant), and memory
that malloc keeps after free().

What is alive changes during a step, and the peak falls at one of a few moments;
`moments` adds up the parts at each, and the plan is their maximum. From the second
step on (AdamW's state exists; zero_grad freed the gradients):

    forward, at the loss          weights + AdamW + activations + the head's tensors
    backward, at the LM head      the same, + the loss's (B, T, V) gradients
    backward, top block           activations - the head's + wte's gradient + work
    backward, block 0             one block's activations + almost all gradients
    backward, the embeddings      all gradients + wte's (V, C) gradient from the
                                  embedding + its sum with the head's (autograd adds
                                  the two into a new tensor)
    the optimizer step            weights + gradients + AdamW
    loading the weights (CPU)     the model, and the file's tensors read one at a time

Backward frees a block's activations as it makes the block's gradients, so in
between, memory moves in a straight line: the largest is at an end. With gradient
accumulation the gradients of earlier micro-batches are alive in every forward.

The CPU's figure. Loading (weights.py) builds the model, then reads the file one
tensor at a time into it: the weights once, and the largest tensor (wte) in flight.
glibc's malloc serves requests up to 32 MB from its heap and keeps what is
freed there for reuse instead of giving it back. Most of what a step frees is
reused later, except where tensors made meanwhile take pieces of the holes: on the
math path (attention dropout), each block's attention makes four (B, nh, T, T)
tensors and frees them, and the heap grows by about their size per block ("freed,
kept by malloc"; none when they are larger than 32 MB: those are mmap()ed, and given
back). Planned and measured peaks:

    run (MB)                                                         planned  measured
    H100, gpt2, bf16, 1 x 1024, defaults                               2,661     2,691
    H100, gpt2, bf16, 1 x 1024, --checkpointing                        2,257     2,269
    H100, gpt2, bf16, 4 x 1024, defaults                               5,472     5,482
    H100, gpt2, bf16, 4 x 1024, --checkpointing                        4,083     4,090
    H100, gpt2-medium, bf16, 1 x 1024, defaults                        6,309     6,310
    H100, gpt2-medium, bf16, 1 x 1024, --checkpointing                 5,871     5,681
    H100, gpt2-medium, bf16, 1 x 1024, --lora 8                        3,632     3,633
    H100, gpt2-medium, bf16, 4 x 1024, defaults                       10,838    10,842
    H100, gpt2-medium, bf16, 4 x 1024, --checkpointing                 7,174     7,194
    H100, gpt2-xl, bf16, 1 x 1024, --lora 8 --checkpointing            7,167     7,304
    H100, gpt2-xl, bf16, 1 x 1024, --lora 8                           12,536    12,736
    H100, gpt2-xl, bf16, 1 x 1024, --checkpointing                    24,445    24,571
    CPU, gpt2, fp32, 1 x 256, defaults                                 2,653     2,719
    CPU, gpt2, fp32, 1 x 256, --lora 8                                 1,169     1,338
    CPU, gpt2-medium, fp32, 1 x 256, defaults                          6,507     6,880
    CPU, gpt2-medium, fp32, 1 x 256, --loss-chunk 0                    6,507     7,058
    CPU, gpt2-medium, fp32, 1 x 256, --checkpointing                   6,507     6,295
    CPU, gpt2-medium, fp32, 1 x 256, --lora 8                          2,596     2,791
    CPU, gpt2-medium, fp32, 1 x 256, --attention-recompute true        6,507     6,558
    CPU, gpt2-medium, fp32, 4 x 256, defaults                          9,198     8,528
    CPU, gpt2-medium, fp32, 4 x 256, --lora 8                          5,269     5,264

(Every row is a real `train.py` run, by benchmarks/plan_check.py. CUDA: an H100, torch
2.11, benchmarks/results/h100 (fp16 gave the same figures as bf16); CPU: the development
machine, torch 2.13, benchmarks/results/cpu. At 1 x 256 the CPU's peak is often loading's.)

Exact and estimated. Weights, gradients and AdamW's state are exact. What forward
keeps (activations, autocast copies, the head's kept tensors) is exact on the CPU,
where the tests count autograd's saved tensors for every option; on CUDA it follows
the fused kernels: an estimate. Working memory (gradients of activations in
backward, loss chunks, a file being loaded) is estimated; against the bytes in use
that malloc reports op by op (benchmarks/plan_check.py --live: gpt2-medium's width,
4 blocks, 1 x 256 and 4 x 256 tokens, every option), planned peaks agree within 3%.
The process baseline, what malloc keeps and the cuBLAS workspaces are measured
estimates; the CPU's peaks above vary by about 100 MB from one run to the next, and
the plan lands within 6% of them, on either side. Not planned: torch.compile (it fuses
operations and keeps other tensors), DDP's gradient buckets (a copy of the
gradients per process), evaluations during and after training.

7. From the command line

`train.py --plan` (`main`) reads the model's config.json alone (a preset that is not
downloaded: its shape from config.py), and resolves the flags with train.py's own
functions (run.py: the precision, the chunked loss and attention_recompute on the
CPU, the block size, the micro-batch; `settings_for`), so the plan is the plan of
the run that the same command without --plan would start. It fits the plan into
--memory (8GB = 8 x 10^9 bytes, 8GiB = 8 x 2^30), else the device's memory (the
GPU's, or the machine's physical memory). `fits_table` (python -m gpt2.plan) makes
the README's table of what fits where.
"""

import os
import sys
import textwrap
from dataclasses import asdict, dataclass, replace

import torch

from .batch import choose_batch
from .cli import train_parser
from .config import PRESETS, GPT2Config
from .distributed import Dist
from .errors import UserError
from .files import write_json
from .hub import ALIASES, default_weights_dir, is_hub_id
from .precision import eval_note, eval_precision, pick_device, resolve_precision
from .run import pick_attention_recompute, pick_block_size, pick_loss_chunk

MB = 2**20  # the MB of train_peak_memory_mb, and of this module
GB = 2**30
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")
PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # a block's matmuls (model.py)
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")  # lora.py's default: all four ("c_proj" names two)

# --- measured constants: estimates, they depend on the machine and the library versions ------
# What `python train.py` holds besides the model: the interpreter, torch, numpy, tokenizers, the
# tokenizer's tables, a small tokenized text, threads. Measured at the start of the first
# optimizer step of CPU runs (/proc/self/statm; torch 2.13, x86-64 Linux): gpt2-medium, 1,670 MB
# less its 1,354 MB of weights. (Before loading, a bit less: 227 MB, the tokenizer and the data
# not read yet; the plan counts 316 then too.) A GPU run does not count it: max_memory_allocated
# sees only the tensors on the GPU.
CPU_BASELINE_BYTES = 316 * MB
# cuBLAS keeps a workspace per thread that multiplies: forward's, and autograd's backward
# thread. PyTorch's allocator gives it, so max_memory_allocated counts it (32 MB each on
# Hopper GPUs). Checked against runs on an H200 (benchmarks/results/h200).
CUDA_WORKSPACE_BYTES = 64 * MB
MMAP_THRESHOLD_MAX = 32 * MB  # glibc's malloc: blocks this large come from mmap(), given back at free()


@dataclass(frozen=True)
class Settings:
    """The options of a training run that decide its memory (the train.py flag beside each).

    The defaults here are plain PyTorch's; train.py's own (the chunked loss and
    attention_recompute on the CPU, ...) are what settings_for() reads from its flags.
    """

    micro_batch: int = 2               # --batch-size: sequences per forward pass
    block_size: int = 1024             # --block-size: tokens per sequence
    precision: str = "fp32"            # fp32, or bf16 / fp16 autocast
    device: str = "cpu"                # cpu or cuda
    checkpointing: bool = False        # --checkpointing: recompute each block in backward
    attention_recompute: bool = False  # --attention-recompute: the same for attention's inside only
    loss_chunk: int = 0                # --loss-chunk: 0 is the plain LM head and loss
    lora_rank: int = 0                 # --lora R: 0 is full fine-tuning
    lora_targets: tuple = LORA_TARGETS  # --lora-targets
    lora_dropout: float = 0.0          # --lora-dropout
    grad_accum: int = 1                # > 1: the gradients are alive during every forward pass

    def __post_init__(self):
        if isinstance(self.lora_targets, str):  # "c_attn,c_proj" as typed on a command line
            object.__setattr__(self, "lora_targets", tuple(t.strip() for t in self.lora_targets.split(",")))
        for name in ("micro_batch", "block_size", "grad_accum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise UserError(f"device must be cpu or cuda, got {self.device!r}")
        if self.loss_chunk < 0 or self.lora_rank < 0 or not 0 <= self.lora_dropout < 1:
            raise UserError("loss_chunk and lora_rank must be >= 0, lora_dropout in [0, 1)")
        if self.lora_rank and not adapted(self.lora_targets):
            raise UserError(f"LoRA targets {self.lora_targets!r} name no projection (c_attn, c_proj, c_fc)")


def adapted(targets) -> tuple:
    """The projections that LoRA targets pick: those whose path ends with a name (lora.py, peft)."""
    return tuple(p for p in PROJECTIONS if any(p == t or p.endswith("." + t) for t in targets))


# --- parameters, gradients, AdamW: exact ------------------------------------------------------

def projection_shapes(n_embd: int) -> dict:
    """{path: (in, out)} of a block's four matmuls."""
    C = n_embd
    return {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}


@dataclass(frozen=True)
class ParameterCount:
    total: int              # every parameter once: the LM head is wte
    trainable: int          # those with a gradient and AdamW state
    trainable_tensors: int  # AdamW keeps a step counter per tensor
    block_matmul: int       # the blocks' matmul weights: cast to 16 bits by autocast
    lora: int               # the adapters' parameters (the trainable ones under LoRA)


def count_parameters(cfg: GPT2Config, lora_rank: int = 0, lora_targets=LORA_TARGETS) -> ParameterCount:
    """The parameters of model.GPT2, plus LoRA adapters of rank lora_rank on the targeted matmuls."""
    C, L = cfg.n_embd, cfg.n_layer
    shapes = projection_shapes(C)
    per_block = sum(i * o + o for i, o in shapes.values()) + 2 * 2 * C  # weights, biases, 2 LayerNorms
    base = (cfg.vocab_size + cfg.n_positions) * C + L * per_block + 2 * C  # embeddings, blocks, ln_f
    base_tensors = 2 + 12 * L + 2
    matmul_weights = L * sum(i * o for i, o in shapes.values())
    if not lora_rank:
        return ParameterCount(base, base, base_tensors, matmul_weights, 0)
    paths = adapted(lora_targets)
    lora = L * sum(lora_rank * sum(shapes[p]) for p in paths)  # A (r, in) and B (out, r) per adapter
    return ParameterCount(base + lora, lora, 2 * L * len(paths), matmul_weights, lora)


def state_bytes(cfg: GPT2Config, s: Settings) -> dict:
    """Weights, gradients and AdamW's state (bytes). Exact: sizes of tensors, nothing else."""
    p = count_parameters(cfg, s.lora_rank, s.lora_targets)
    return {
        "weights": 4 * p.total,  # fp32 master weights, the frozen ones too
        "gradients": 4 * p.trainable,  # fp32, one per trainable parameter (p.grad)
        # exp_avg and exp_avg_sq in fp32, and fused AdamW's fp32 step counter per tensor
        "optimizer": 8 * p.trainable + 4 * p.trainable_tensors,
    }


# --- activations: what forward keeps for backward ----------------------------------------------
# Exact on the CPU: these are the tensors torch.autograd.graph.saved_tensors_hooks sees (the
# tests count them). On CUDA the attention and dropout terms follow what the fused kernels
# keep (q, k, v, output, log-sum-exp; bool dropout masks): an estimate.

def _tokens(s: Settings) -> int:
    return s.micro_batch * s.block_size


def _act_bytes(s: Settings) -> int:
    """Bytes per number of a matmul's output: 2 under bf16 / fp16 autocast, 4 in fp32."""
    return 4 if s.precision == "fp32" else 2


def attention_kernel(cfg: GPT2Config, s: Settings) -> str:
    """Which attention training runs: "math", PyTorch's composition of matmuls, softmax and dropout
    (on the CPU with attention dropout, which its fused CPU kernel lacks), or "fused" (flash,
    memory-efficient: CUDA, or the CPU without dropout)."""
    return "math" if s.device == "cpu" and cfg.attn_pdrop > 0 else "fused"


def _mask_bytes(s: Settings, input_bytes: int) -> int:
    # CUDA's fused dropout keeps a bool mask. The CPU computes input * (mask / (1 - p)) and keeps
    # that scaled mask, in the input's dtype (measured).
    return 1 if s.device == "cuda" else input_bytes


def _recomputes(cfg: GPT2Config, s: Settings) -> bool:
    """model.py recomputes attention's inside only with attention dropout (else nothing T x T is kept)."""
    return s.attention_recompute and cfg.attn_pdrop > 0


def _attention_terms(cfg: GPT2Config, s: Settings, c_proj_input: int) -> tuple:
    """(q k v, T x T part, output) that attention keeps, given what attn c_proj keeps of its input."""
    N, C, a = _tokens(s), cfg.n_embd, _act_bytes(s)
    B, T, H = s.micro_batch, s.block_size, cfg.n_head
    if _recomputes(cfg, s):
        if s.device == "cpu":  # attention.py: fp32 q, k, v and the dropout mask as bools
            return 3 * N * C * 4, B * H * T * T, c_proj_input
        return 3 * N * C * a, 0, c_proj_input  # the checkpoint keeps q, k, v (views of c_attn's output)
    if attention_kernel(cfg, s) == "math":  # fp32 copies of q, k, v and three fp32 (B, nh, T, T) tensors
        return 3 * N * C * 4, 3 * B * H * T * T * 4, c_proj_input
    # The fused kernel keeps its output, which is c_proj's input too, unless a LoRA dropout
    # gives the adapter its own copy.
    dropped = N * C * a if s.lora_dropout and "attn.c_proj" in adapted(s.lora_targets) and s.lora_rank else 0
    return 3 * N * C * a, B * H * T * 4, N * C * a + dropped


def block_terms(cfg: GPT2Config, s: Settings) -> list:
    """(what, bytes) that one block keeps for backward, for the whole micro-batch."""
    N, C, a = _tokens(s), cfg.n_embd, _act_bytes(s)
    lora = adapted(s.lora_targets) if s.lora_rank else ()

    def matmul_input(path, n):  # a frozen matmul without an adapter needs no input for backward
        return n * a if not s.lora_rank or path in lora else 0

    ln = N * (4 * C + 8)  # its fp32 input (the residual stream) and a mean and 1/std per position
    mask = N * C * _mask_bytes(s, a) if cfg.resid_pdrop > 0 else 0
    qkv, scores, out = _attention_terms(cfg, s, matmul_input("attn.c_proj", N * C))
    terms = [("ln_1: input (fp32), mean, 1/std", ln), ("c_attn: input", matmul_input("attn.c_attn", N * C)),
             ("attention: q, k, v", qkv),
             ("attention: T x T probabilities, mask, dropped (math) / log-sum-exp (fused)", scores),
             ("attention output = attn c_proj's input", out), ("dropout mask after attention", mask),
             ("ln_2: input (fp32), mean, 1/std", ln), ("c_fc: input", matmul_input("mlp.c_fc", N * C)),
             ("GELU: input", 4 * N * C * a),
             ("mlp c_proj: input (GELU's output)", matmul_input("mlp.c_proj", 4 * N * C)),
             ("dropout mask after the MLP", mask)]
    if s.lora_rank:
        terms.append(("LoRA: x @ A.T, (B, T, r) per adapter", len(lora) * N * s.lora_rank * a))
        terms.append(("LoRA: dropout masks on the adapters' inputs", _lora_mask_bytes(cfg, s, lora)))
    return terms


def _lora_mask_bytes(cfg: GPT2Config, s: Settings, paths) -> int:
    """The adapters' dropout masks: one per adapter, the size of its input, in the input's dtype."""
    if not s.lora_dropout:
        return 0
    N, a, shapes = _tokens(s), _act_bytes(s), projection_shapes(cfg.n_embd)
    # c_attn and c_fc read a LayerNorm's output (fp32), the c_projs a matmul-dtype tensor
    dtype = {"attn.c_attn": 4, "mlp.c_fc": 4, "attn.c_proj": a, "mlp.c_proj": a}
    return sum(N * shapes[p][0] * _mask_bytes(s, dtype[p]) for p in paths)


def activation_bytes(cfg: GPT2Config, s: Settings) -> dict:
    """What the embeddings, the blocks and ln_f keep for backward (bytes, one micro-batch)."""
    N, C, L = _tokens(s), cfg.n_embd, cfg.n_layer
    block = sum(b for _, b in block_terms(cfg, s))
    ln = N * (4 * C + 8)
    if s.lora_rank:
        # wte, wpe and block 0's ln_1 are frozen and nothing before them learns: they keep nothing
        # (nor does block 0's c_attn adapter dropout). Exact when c_attn has an adapter; without,
        # more of block 0 needs no gradient, and this counts it anyway.
        embeddings = 0
        c_attn = ["attn.c_attn"] if "attn.c_attn" in adapted(s.lora_targets) else []
        frozen_start = ln + _lora_mask_bytes(cfg, s, c_attn)
    else:  # ids and positions (int64) for the embedding backward, the embedding dropout's mask
        mask = N * C * _mask_bytes(s, 4) if cfg.embd_pdrop > 0 else 0  # the embeddings are fp32
        embeddings, frozen_start = 8 * N + 8 * s.block_size + mask, 0
    # checkpointing: only each block's input (fp32) is kept; backward recomputes the rest
    blocks = L * N * C * 4 if s.checkpointing else L * block - frozen_start
    return {"embeddings": embeddings, "blocks": blocks, "ln_f": ln, "one block": block}


def head_bytes(cfg: GPT2Config, s: Settings) -> dict:
    """What the LM head and the loss keep for backward (bytes, one micro-batch)."""
    N, C, V = _tokens(s), cfg.n_embd, cfg.vocab_size
    trains_wte = not s.lora_rank
    if s.loss_chunk:  # loss.py computes both gradients in forward and keeps only them
        return {"d loss/d hidden (B, T, C) fp32": 4 * N * C,
                "d loss/d W (V, C) fp32": 4 * V * C if trains_wte else 0, "count": 8}
    return {"hidden states (for d/d W)": N * C * _act_bytes(s) if trains_wte else 0,
            "log-softmax (B, T, V) fp32": 4 * N * V, "targets (int64)": 8 * N + 4}


def autocast_copy_bytes(cfg: GPT2Config, s: Settings) -> dict:
    """The 16-bit copies of the weights that autocast makes in forward and backward keeps (bytes).

    Each matmul's weight is cast once per forward; backward multiplies the incoming gradient
    by that copy. Under checkpointing, backward recasts them a block at a time (moments()).
    """
    if s.precision == "fp32":
        return {"blocks": 0, "one block": 0, "head": 0}
    C, L = cfg.n_embd, cfg.n_layer
    p = count_parameters(cfg, s.lora_rank, s.lora_targets)
    blocks = 2 * p.block_matmul + 2 * p.lora
    if s.lora_rank:  # block 0's c_attn: its input needs no gradient, so no copy of W (or A) is kept
        blocks -= 2 * 3 * C * C + (2 * s.lora_rank * C if "attn.c_attn" in adapted(s.lora_targets) else 0)
    head = 0 if s.loss_chunk else 2 * cfg.vocab_size * C  # the chunked loss makes its own, for forward only
    return {"blocks": blocks, "one block": (2 * p.block_matmul + 2 * p.lora) // L, "head": head}


def saved_bytes(cfg: GPT2Config, s: Settings) -> int:
    """Everything autograd keeps from one micro-batch's forward for its backward (bytes).

    The number tests/test_plan.py compares with torch.autograd.graph.saved_tensors_hooks.
    """
    act, cp = activation_bytes(cfg, s), autocast_copy_bytes(cfg, s)
    copies = (0 if s.checkpointing else cp["blocks"]) + cp["head"]
    return act["embeddings"] + act["blocks"] + act["ln_f"] + sum(head_bytes(cfg, s).values()) + copies


# --- working memory: tensors that live for a moment (estimates) ---------------------------------

def loss_forward_bytes(cfg: GPT2Config, s: Settings) -> int:
    """The LM head and the loss at their largest in forward: what they keep, plus working tensors."""
    N, C, V = _tokens(s), cfg.n_embd, cfg.vocab_size
    kept = sum(head_bytes(cfg, s).values())
    if not s.loss_chunk:
        # The (B, T, V) logits (16-bit under autocast, then the fp32 copy the loss reads) next to
        # the log-softmax, which is kept.
        return kept + 4 * N * V + (2 * N * V if s.precision != "fp32" else 0)
    n = min(s.loss_chunk, N)  # rows of the first chunk
    m = min(n, N - n)         # rows of the next one (0: a single chunk)
    if s.precision == "fp32":
        # z, a chunk's (n, V) fp32 logits, becomes its gradient in place; the next chunk's z is
        # built while the previous one is still referenced (loss.py's loop): two at once.
        return kept + 4 * V * (n + m)
    dw = 0 if s.lora_rank else 2 * V * C  # the 16-bit product g.T @ h before its fp32 copy
    first = 6 * n * V + dw           # z (fp32) and g (16-bit) of the first chunk
    turn = 6 * (n + m) * V           # the previous z and g, the next chunk's 16-bit and fp32 logits
    later = 6 * m * V + 3 * dw if m else 0  # z, g, the product in 16 bits and in fp32
    return kept + 2 * V * C + max(first, turn, later)  # + the 16-bit copy of W, for the whole loss


def block_backward_bytes(cfg: GPT2Config, s: Settings) -> int:
    """Working memory while one block runs backward: the gradients of its intermediate tensors,
    and what attention_recompute rebuilds."""
    N, C, a = _tokens(s), cfg.n_embd, _act_bytes(s)
    TT = s.micro_batch * cfg.n_head * s.block_size ** 2 * 4  # one fp32 (B, nh, T, T) tensor
    math = attention_kernel(cfg, s) == "math"
    residual = 2 * 4 * N * C  # the residual stream's gradient, coming in and going out (fp32)
    mlp = 2 * 4 * N * C * a   # d/d GELU output and d/d GELU input
    attention = 2 * TT if math else 4 * N * C * a  # d/d probabilities and scores / d/d q, k, v, output
    if _recomputes(cfg, s):  # attention's inside, rebuilt for its backward, freed as its gradients come
        attention = max(attention, 3 * N * C * 4 + 3 * TT if math else N * C * a)
    return residual + max(mlp, attention)


# --- the moments of a training step, and the peak --------------------------------------------

PARTS = ("weights", "gradients", "optimizer", "activations", "lm_head", "autocast_copies", "working",
         "malloc_kept", "baseline")


def _block_gradient_bytes(cfg: GPT2Config, s: Settings) -> int:
    """The gradients of one block's trainable parameters (bytes)."""
    p = count_parameters(cfg, s.lora_rank, s.lora_targets)
    per_block = p.lora if s.lora_rank else p.total - (cfg.vocab_size + cfg.n_positions + 2) * cfg.n_embd
    return 4 * per_block // cfg.n_layer


def malloc_kept_bytes(cfg: GPT2Config, s: Settings) -> int:
    """CPU: memory that glibc's malloc keeps from the T x T tensors of attention (an estimate).

    On the math path each block's attention makes four fp32 (B, nh, T, T) tensors (the scores,
    the probabilities, the dropout mask, the dropped ones) and frees them: at once with
    attention_recompute, in backward without, in the block's recomputation with checkpointing.
    glibc serves requests up to 32 MB from its heap and keeps what is freed there; tensors made
    meanwhile take pieces of those holes, so the next block's T x T tensors no longer fit in
    them, and the heap grows by about their size per block. Measured with mallinfo2 for
    gpt2-medium, 4 x 256 tokens, attention_recompute: 1.5 to 1.7 GB free in the heap at the
    forward's peak; 24 x 4 x 16 MB = 1.5 GB. Larger tensors are mmap()ed, and given back.
    """
    if s.device != "cpu" or attention_kernel(cfg, s) != "math":
        return 0
    TT = s.micro_batch * cfg.n_head * s.block_size ** 2 * 4  # one fp32 (B, nh, T, T) tensor
    return cfg.n_layer * 4 * TT if TT < MMAP_THRESHOLD_MAX else 0


def _fixed_parts(cfg: GPT2Config, s: Settings) -> dict:
    """What every moment of a step holds: the weights, AdamW's state, what the process counts besides."""
    st = state_bytes(cfg, s)
    parts = dict.fromkeys(PARTS, 0)
    parts.update(weights=st["weights"], optimizer=st["optimizer"],
                 gradients=st["gradients"] if s.grad_accum > 1 else 0)  # earlier micro-batches' gradients
    if s.device == "cpu":
        # ru_maxrss counts the process: Python, torch, the tokenizer, the data (measured), and
        # memory malloc keeps after free(): see the module docstring, "The CPU's figure".
        parts.update(baseline=CPU_BASELINE_BYTES, malloc_kept=malloc_kept_bytes(cfg, s))
    else:
        parts.update(baseline=CUDA_WORKSPACE_BYTES)
    return parts


def _backward_moments(cfg: GPT2Config, s: Settings, base: dict) -> dict:
    """The ends of backward: the top block, block 0, the embeddings."""
    act, cp, G = activation_bytes(cfg, s), autocast_copy_bytes(cfg, s), state_bytes(cfg, s)["gradients"]
    N, C, V = _tokens(s), cfg.n_embd, cfg.vocab_size
    accum = s.grad_accum > 1  # then all gradients exist already; new ones are added in place
    head_grad = 0 if s.lora_rank else 4 * V * C  # wte's gradient exists from the LM head's backward on
    emb_grad = 0 if s.lora_rank else 4 * cfg.n_positions * C
    recompute = act["one block"] if s.checkpointing else 0  # checkpointing: a block rebuilt in backward
    copies = cp["one block"] if s.checkpointing else cp["blocks"]
    work = block_backward_bytes(cfg, s)
    out = {"backward (top block)": {
        **base, "gradients": G if accum else head_grad, "autocast_copies": copies,
        "activations": act["embeddings"] + act["blocks"] + recompute, "working": work}}
    first = act["one block"] + (4 * N * C if s.checkpointing else 0)  # block 0 (and its input)
    out["backward (block 0)"] = {
        **base, "gradients": G if accum else G - _block_gradient_bytes(cfg, s) - emb_grad,
        "activations": act["embeddings"] + first, "autocast_copies": cp["one block"], "working": work}
    if not s.lora_rank:  # wte's gradient from the embedding, dense (V, C), and its sum with the head's
        out["backward (embeddings)"] = {**base, "gradients": G, "working": 2 * 4 * V * C}
    return out


def moments(cfg: GPT2Config, s: Settings) -> dict:
    """{moment: {part: bytes}}: what is in use at each moment where the peak can fall.

    A step from the second on (AdamW's state exists; zero_grad freed the gradients). Backward
    frees a block's activations as it makes the block's gradients, so what is in use changes
    linearly from its start (the top block) to its end (block 0): the largest is at an end.
    """
    base = _fixed_parts(cfg, s)
    act, cp = activation_bytes(cfg, s), autocast_copy_bytes(cfg, s)
    N, V = _tokens(s), cfg.vocab_size
    kept = act["embeddings"] + act["blocks"] + act["ln_f"]
    # Trainable weights' copies stay in autocast's cache until forward ends; frozen ones are
    # not cached, and under checkpointing not kept for backward either.
    fwd_copies = 0 if s.checkpointing and s.lora_rank else cp["blocks"]
    out = {"forward (the loss)": {**base, "activations": kept, "lm_head": loss_forward_bytes(cfg, s),
                                  "autocast_copies": fwd_copies + cp["head"]}}
    if not s.loss_chunk:  # log-softmax's backward: its output, the incoming and outgoing gradients
        out["backward (the LM head)"] = {
            **base, "activations": kept, "lm_head": sum(head_bytes(cfg, s).values()) + 8 * N * V,
            "autocast_copies": (0 if s.checkpointing else cp["blocks"]) + cp["head"]}
    out.update(_backward_moments(cfg, s, base))
    out["optimizer step"] = {**base, "gradients": state_bytes(cfg, s)["gradients"]}
    if s.device == "cpu":  # the model is loaded on the CPU (then moved to the GPU, where nothing of this counts)
        out["loading the weights"] = {**dict.fromkeys(PARTS, 0), "baseline": CPU_BASELINE_BYTES,
                                      **_load_parts(cfg)}
    return out


def _load_parts(cfg: GPT2Config) -> dict:
    """Loading model.safetensors (weights.py): the model, and the file's tensors read one at a time.

    The largest tensor read is wte (V, C); measured for gpt2-medium (torch 2.13): the peak is
    1,786 MB above the RSS before loading, the model's 1,354 MB and 432 MB more, twice wte.
    """
    p = count_parameters(cfg)
    return {"weights": 4 * p.total, "working": 2 * 4 * cfg.vocab_size * cfg.n_embd}


# --- the plan ----------------------------------------------------------------------------------

# name printed, what it is, exact? (None: exact on the CPU, where tests/test_plan.py counts the
# tensors autograd saves; an estimate on CUDA, from the fused kernels' outputs)
PART_NOTES = {
    "weights": ("weights", "fp32, frozen ones too; the LM head is wte, counted once", True),
    "gradients": ("gradients", "fp32, one per trainable parameter (those made by this moment)", True),
    "optimizer": ("AdamW state", "2 fp32 moments per trainable parameter, a step counter per tensor", True),
    "activations": ("activations", "what forward keeps for backward: embeddings, blocks, ln_f", None),
    "lm_head": ("LM head and loss", "logits, log-softmax, their gradients / the loss chunks", False),
    "autocast_copies": ("autocast weight copies", "16-bit copies of the weights, kept for backward", None),
    "working": ("working memory", "short-lived: gradients of activations, a file being loaded", False),
    "malloc_kept": ("freed, kept by malloc", "CPU: attention's T x T tensors, freed, kept in glibc's heap", False),
    "baseline": ("process baseline", "Python, torch, the tokenizer, the data (measured once)", False),
}
CUDA_BASELINE_NOTE = ("cuBLAS workspaces", "one for forward's thread, one for backward's", False)


@dataclass(frozen=True)
class Plan:
    config: GPT2Config
    settings: Settings
    moments: dict  # {moment: {part: bytes}}
    peak_at: str   # the moment of the peak

    @property
    def parts(self) -> dict:
        """{part: bytes} at the peak; they add up to peak_bytes."""
        return self.moments[self.peak_at]

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MB


def plan(cfg: GPT2Config, s: Settings) -> Plan:
    """The memory plan of training `cfg` with settings `s`: no model is built, no weight is read."""
    if s.block_size > cfg.n_positions:
        raise UserError(f"block size {s.block_size} is above the model's {cfg.n_positions} positions")
    m = moments(cfg, s)
    return Plan(cfg, s, m, max(m, key=lambda k: sum(m[k].values())))


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
    cfg = model_config(args.model, args.weights_dir)
    if args.dropout is not None:  # the CPU's attention path depends on it (attention_kernel)
        cfg = cfg.with_dropout(args.dropout)
    device = planned_device(args.device, args.memory)
    s, notes = settings_for(args, cfg, device)
    memory, what = (args.memory, "--memory") if args.memory else device_memory(device)

    def recompute(checkpointing, lora_rank):  # train.py's choice for each row of the table of options
        return pick_attention_recompute(args.attention_recompute, device, checkpointing, s.block_size,
                                        lora=bool(lora_rank))[0]

    print(format_plan(cfg, s, memory, lora=True, name=args.model, recompute=recompute))
    print(f"\nmemory to fit: {memory / MB:,.0f} MB ({what})")
    for note in notes:
        print(note)
    if args.batch_size == "auto":
        print(f"--batch-size auto: planned with micro-batch {s.micro_batch}; the largest that fits in "
              f"{memory / MB:,.0f} MB is {largest_micro_batch(memory, cfg, s)}")
    if args.json:
        try:
            write_json(args.json, plan_json(cfg, s, memory, lora=True, recompute=recompute))
        except OSError as e:
            raise UserError(f"--json {args.json}: cannot write it ({e.strerror or e})") from None
        print(f"written to {args.json}")
    return 0


# --- the README's table: what fits where ---------------------------------------------------------

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
              "even one sequence. Computed by gpt2/plan.py (`train.py --plan`), not measured on these GPUs; "
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


if __name__ == "__main__":  # python -m gpt2.plan: the README's table (fits_table)
    print(fits_table())
    sys.exit(0)
