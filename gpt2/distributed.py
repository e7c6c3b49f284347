"""Several processes, one model: what changes when training runs under torchrun.

`torchrun --nproc_per_node=N train.py ...` starts N copies of this program and tells
each one its rank (0..N-1) in environment variables. Each copy holds the whole model,
reads a different share of every batch, and computes gradients on it; PyTorch's
DistributedDataParallel (DDP) then averages the gradients across the copies during
backward (an all-reduce), so every copy takes the same optimizer step and the models
stay identical. N processes with micro-batch B therefore train like one process with
micro-batch N x B: the effective batch is micro-batch x accumulation x world size.

With a single process (no torchrun) everything here is a no-op, so the training loop
reads the same either way.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, draws progress bars and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self):
        if self.enabled:
            dist.barrier()


def setup(device_arg: str):
    """Join the process group when started by torchrun; return (Dist, device)."""
    from .precision import pick_device

    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(), pick_device(device_arg)
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = pick_device(device_arg)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    # NCCL moves GPU tensors GPU-to-GPU; gloo is the CPU backend. A timeout turns a
    # rank that died or hangs into an error on the others instead of a silent hang.
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(minutes=10),
        device_id=device if device.type == "cuda" else None,
    )
    return d, device


def teardown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
