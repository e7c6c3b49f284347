"""Several processes, one model: what changes when training runs under torchrun.

`torchrun --nproc_per_node=N train.py ...` starts N copies of this program and tells
each one its rank (0..N-1) in environment variables. Each copy holds the whole model,
reads a different share of every batch, and computes gradients on it; PyTorch's
DistributedDataParallel (DDP) then averages the gradients across the copies during
backward (an all-reduce), so every copy takes the same optimizer step and the models
stay identical. N processes with micro-batch B therefore train like one process with
micro-batch N x B: the effective batch is micro-batch x accumulation x world size.

What every process must agree on, and how:

* The data: every process computes the same seeded permutation of the blocks and takes
  its own share of each step's micro-batches (trainer.py, `step_micro_batches`).
* The gradients: DDP all-reduces them in backward, once per optimizer step (the other
  micro-steps of an accumulation run under `no_sync`, so nothing is sent for them).
* Collectives (all-reduce, barrier, gather) are meeting points: every process must
  call the same ones in the same order, or the early ones wait for ever (until the
  timeout below). So decisions that could differ between processes - stop after
  Ctrl-C, stop on a NaN loss - are first put to a vote (`any`), and all act on the
  result together.
* Dropout: each process seeds its generator with seed + rank, so the processes draw
  different masks (the same masks everywhere would make N processes look at the same
  noise N times). A resumable state therefore stores every process's generator state.
* Files: rank 0 alone writes; the others read what it wrote after a barrier.

If one process fails, it exits; torchrun sees that and stops the others (the ones
waiting in a collective for the dead one included) within a second, and the run ends
with the failed process's message.

With a single process (no torchrun) everything here is a no-op, so the training loop
reads the same either way.
"""

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .precision import pick_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # A CPU (gloo) process group for small host-side messages: votes and Python
    # objects. With NCCL, whose collectives take GPU tensors, a vote through the main
    # group would need a GPU tensor and a GPU-to-host copy that waits for the GPU.
    cpu_group: Any = None

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
            dist.barrier(group=self.cpu_group)

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is true on at least one of them."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor(int(bool(flag)))
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(t.item())

    def all_gather_object(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process (obj: any picklable value)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.cpu_group)
        return out


_joined = None  # (Dist, device) once this process has joined the group


def setup(device_arg: str):
    """Join the process group when started by torchrun; return (Dist, device).

    Once per program: a later call (a --lr sweep trains several times in one process)
    returns the same group, because torchrun's rendezvous cannot be joined twice.
    The group is left when the program exits.
    """
    global _joined
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(), pick_device(device_arg)
    if _joined is not None:
        return _joined
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = pick_device(device_arg)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    # NCCL moves GPU tensors GPU-to-GPU; gloo is the CPU backend. If a process dies,
    # torchrun stops the others at once; the timeout is for a process that hangs
    # without dying: the others then fail after 10 minutes instead of waiting for ever.
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(minutes=10),
        device_id=device if device.type == "cuda" else None,
    )
    d.cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    atexit.register(_leave)
    _joined = d, device
    return _joined


# What gloo and NCCL say when the process at the other end of a collective is gone.
PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "communicator was aborted",
             "connection refused", "socket timeout", "remote process exited")


def lost_a_process(e: BaseException) -> str | None:
    """One line for an error that only says another process of the run died (kill -9, out of
    memory), else None. The backend's own text is a 30-line traceback about sockets."""
    text = str(e)
    if not (isinstance(e, RuntimeError) and dist.is_available() and dist.is_initialized()
            and any(p in text.lower() for p in PEER_GONE)):
        return None
    reason = (text.strip().splitlines() or [""])[-1].split("] ")[-1][:120]
    return (f"another process of this torchrun run stopped (killed, or out of memory?): the collective failed "
            f"({reason})")


def is_first_rank_or_alone() -> bool:
    """Before the group is joined, every process checks the same flags and raises the same error:
    only rank 0 (or a process outside torchrun) prints it, once per run."""
    return _joined is not None or os.environ.get("RANK", "0") == "0"


def leave_together():
    """At the end of a program that ran to its end: wait for every process, then leave the group.

    A process that leaves while another still holds a connection to it can abort at exit
    (gloo: "terminate called without an active exception", in about 1 torchrun run in 12
    here). A program that fails leaves alone (_leave, at exit): the others may never
    reach a barrier.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _leave():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
