"""Where the memory of a training step goes: a plan, before anything runs.

Every number here is a formula of the model's shape (config.py) and the run's options:
nothing is built, no weight is read. In short:

    weights, gradients, AdamW   16 bytes per trained parameter (4 + 4 + 8), exact
    activations                 what forward keeps for backward, per token and block
    the LM head and the loss    (B, T, 50,257) logits and their gradients
    working memory              what lives for a moment: a block's backward, the loss
    the process                 CUDA's context and workspaces, the CPU's libraries and malloc

`moments` adds them up at the moments of a step that can be its peak (the end of
forward, inside the head's backward, inside the first block's backward); `plan` takes
the largest. Every term, with its tables and the measurements it was checked against,
is explained in docs/plan.md; tests/test_plan.py checks the terms against what PyTorch
really keeps, benchmarks/plan_check.py against real runs. MB = 2^20 bytes, GB = 2^30.

What fits (`largest_micro_batch`, `combinations`), the printed plan and the command
line are in plan.py.
"""

from dataclasses import dataclass

from gpt2.config import GPT2Config
from gpt2.errors import UserError

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
    # nn.Dropout (LoRA's): CUDA's fused dropout keeps a bool mask. The CPU computes
    # input * (mask / (1 - p)) and keeps that scaled mask, in the input's dtype (measured).
    # The model's own dropouts (gpt2/dropout.py) keep a bool mask on every device: 1 byte.
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
    if attention_kernel(cfg, s) == "math":  # attention.py's dropout_attention: fp32 copies of q, k, v,
        # two fp32 (B, nh, T, T) tensors (the softmax, the dropped probabilities) and the bool mask
        return 3 * N * C * 4, 2 * B * H * T * T * 4 + B * H * T * T, c_proj_input
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
    mask = N * C if cfg.resid_pdrop > 0 else 0  # gpt2/dropout.py: a bool mask
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
        mask = N * C if cfg.embd_pdrop > 0 else 0  # gpt2/dropout.py: a bool mask
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
