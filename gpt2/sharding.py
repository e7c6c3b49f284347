"""Sharded training (FSDP): past one GPU's memory by splitting the model's state across the processes.

Read distributed.py first: there, under DDP, every process holds the whole model, its
whole gradient and AdamW's two whole moments, and an all-reduce makes the gradients
equal everywhere after each backward. Per trained parameter that is 4 (fp32 weight)
+ 4 (gradient) + 8 (AdamW's m and v) = 16 bytes on every GPU, before one activation:
gpt2-xl's 1.56B parameters need 25 GB each, on each of the N GPUs. N copies of the same
numbers.

FSDP ("fully sharded data parallel", PyTorch's `fully_shard`, FSDP2) keeps one copy,
cut into N pieces: process r holds the r-th 1/N of every weight (a "shard", dim 0 of
each tensor), of its gradient and of its moments. So 16 / N bytes a parameter. A layer
still needs its whole weights for its matmuls, so each transformer block gathers them
just in time and drops them again:

    forward of block i     all-gather block i's weights (each process sends its shard,
                           all receive the whole), compute, free the gathered copy
    backward of block i    all-gather them again, compute the whole gradient of this
                           process's micro-batch, then REDUCE-SCATTER it: the gradients
                           of all processes are summed (averaged) and process r keeps
                           only the r-th piece of the sum, the piece its optimizer updates
    optimizer step         AdamW on the shards alone: each process updates its 1/N of
                           every weight, with its 1/N of the moments; no communication

An all-reduce (DDP) is exactly a reduce-scatter followed by an all-gather: DDP
all-gathers the summed gradient so that everyone can update everything; FSDP stops
half-way, everyone updates only its piece, and the all-gather moves to the weights in
the next forward. The bytes sent per step are about the same as DDP's plus one more
all-gather (backward's); the memory is what changes: at any moment a process holds its
shards plus the whole weights of a block or two (the one computing, the next one being
gathered), which is why the plan (harness/memory.py) counts "the largest block
gathered in full".

Where the cuts are (`shard`): each block is a unit (`fully_shard(block)`) and then
the root, GPT2 itself, whose own unit takes what is left: the token and position
embeddings, ln_f and the LM head. The LM head IS the token embedding (model.py: one
Parameter, tied), used at the very start and the very end of forward: both uses must
see the same gathered tensor and add their gradients into the same shard, so the two
must sit in one unit. They do here because neither is inside a block; wrapping
`lm_head` on its own would put one Parameter in two units (torch refuses it). For the
same reason the model is built and loaded normally before sharding: building it on the
meta device and materialising it later would make two tensors of the tied one.

The optimizer is built AFTER sharding (trainer.py builds it after this wrap): sharding
replaces every Parameter of the model by a new one that holds a shard (a DTensor, a
tensor that knows it is a piece of a larger one). An optimizer built before would
update the old, whole Parameters that no longer take part in anything.

Three things of a training step, as on one process:

* Gradient accumulation: the micro-steps before the last of an optimizer step run
  with `set_requires_gradient_sync(False)` (DDP's `no_sync`): the gradient stays whole
  (unsharded) on each process and adds up; the last micro-step reduce-scatters the sum
  once. (It costs memory: a whole gradient per process during accumulation, 4 bytes a
  parameter. So not with --offload, whose point is a small GPU: there every micro-step
  reduce-scatters, and the gradient shards add up in host memory.)
* Clipping: `clip_grad_norm_` sees DTensor gradients; the norm of each shard is
  squared, summed ACROSS the processes, then rooted: the global norm of the whole
  gradient, the same number one process would compute (`global_norm` below turns it
  into a plain tensor for the log).
* Mixed precision (FSDP's `MixedPrecisionPolicy`): the shards, the master weights
  AdamW updates, stay fp32; under bf16 the weights are gathered in bf16 (half the bytes
  sent and held) and the gradients are reduced in fp32, so that adding up N processes'
  gradients loses no precision. Evaluation then reads the bf16 gathered weights too.

`--offload` (`CPUOffloadPolicy`) goes one step further for one small GPU: the shards,
their gradients and AdamW's moments live in host memory, AdamW runs on the CPU, and
each block's weights visit the GPU only for its forward and backward. A GPU then holds
a block or two of weights and the activations; the price is the copies over PCIe and a
CPU optimizer step (docs/distributed.md says how much, as an estimate).

The full model (the final model, checkpoint-<step>/, best/) is gathered on rank 0 and
written as an ordinary Hugging Face folder (`full_state_dict`); the resumable state is
written by every process, its shards in parallel, through PyTorch's distributed
checkpoint (sharded_state.py).
"""

import datetime

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from .errors import UserError

# The dtype the weights are gathered in (and blocks compute in) for each training precision.
GATHER_DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def describe(cfg, world_size: int) -> str:
    """The run header's words on sharding: where the state is, what the computation reads."""
    where = "in host memory (offload)" if cfg.offload else "on the device"
    gathered = f"gathered in {cfg.precision} (evaluations read them too)" if cfg.precision != "fp32" else "gathered"
    return (f"sharded (FSDP): each process keeps 1/{world_size} of the weights, gradients and AdamW's moments "
            f"{where}, each block's weights {gathered} while it computes")


def is_sharded(model) -> bool:
    return isinstance(model, FSDPModule)


def join_alone(device):
    """A process group of one, for --offload without torchrun: FSDP needs a group even for one process."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1, timeout=datetime.timedelta(minutes=10))


def shard(model, device, precision: str, offload: bool = False):
    """Shard `model` in place over all processes: each block, then the root (see the module docstring).

    Returns the same object, now an FSDPModule: its parameters are DTensors holding this
    process's shard. Build the optimizer after this.
    """
    if precision == "fp16":  # (--precision auto picks fp16 on a GPU without bf16: known only now)
        raise UserError("--fsdp / --offload train in bf16 or fp32: fp16's loss scaler across shards is not "
                        "built here; pass --bf16 on a GPU that has it, or --precision fp32")
    join_alone(device)
    # An explicit mesh of the processes on this device type: the default one guesses the
    # device (and crashes on a machine that has CUDA while training on the CPU).
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=GATHER_DTYPE[precision], reduce_dtype=torch.float32)
    # pin_memory speeds up host-to-GPU copies; a CPU-only build has no pinned memory
    where = CPUOffloadPolicy(pin_memory=device.type == "cuda") if offload else OffloadPolicy()
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy, offload_policy=where)
    # The root: wte (= the tied LM head), wpe, ln_f. Not resharded after forward (torch's
    # choice for the root): they are needed again at once, by the LM head and in backward.
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=where)
    return model


class gradient_sync_off:
    """`with gradient_sync_off(model):` the backward passes inside keep the whole gradient and
    add it up, without reduce-scatter (a micro-step before the last of an accumulation)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.model.set_requires_gradient_sync(False)

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)


def global_norm(norm):
    """clip_grad_norm_'s result as a plain tensor (under FSDP a DTensor: already the global norm)."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class gathered_root:
    """`with gathered_root(model):` the root's weights (embeddings, ln_f, the LM head) gathered,
    for code that calls model.hidden_states and model.lm_head directly (evaluation.py)
    instead of model(...), whose hooks would gather them. The blocks gather their own."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        if is_sharded(self.model):
            self.model._get_fsdp_state()._lazy_init()  # as the first forward would: the root is known
            self.model.unshard()

    def __exit__(self, *exc):
        if is_sharded(self.model):
            self.model.reshard()


def full_state_dict(model) -> dict:
    """The whole model's weights as plain CPU tensors, on rank 0 ({} on the others).

    A collective: every process must call it. The tied LM head comes out under both of its
    names, one tensor (weights.to_hf writes it once).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def load_full_state_dict(model, state: dict) -> None:
    """Put whole weights (read from a model file, on every process) into the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = {**state, "lm_head.weight": state["transformer.wte.weight"]}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

