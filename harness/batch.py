"""How many sequences go through the model at once: the micro-batch, and --batch-size auto.

The effective batch (sequences per optimizer step, all processes together) is what
changes the training; the micro-batch (sequences per forward pass) only changes how
that batch is cut into forward passes, and how much memory each pass needs. So
`--batch-size auto` keeps the effective batch and looks for the largest micro-batch
that fits and divides it; the accumulation makes up the rest (trainer.py).

Finding what fits: try a real forward + backward at the real sequence length, catch
the GPU's out-of-memory error, free what the failed try held, and search: double
until a size fails, then bisect between the last size that fitted and the first that
did not (`find_micro_batch`). On the CPU there is nothing to try: running out of
memory there does not raise an error, the system swaps or kills the process; auto
then keeps the default micro-batch of 2. (`train.py --plan` predicts the memory
instead of trying; see plan.py.)
"""

import gc

import torch

from gpt2.errors import UserError
from gpt2.precision import autocast


def _fits(try_step, batch_size) -> bool:
    try:
        try_step(batch_size)
        return True
    except torch.OutOfMemoryError:
        return False
    # Leaving the except block drops the exception and its traceback, whose frames
    # still reference the failed step's tensors; only then can the memory be freed.


def _free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give cached blocks back, so the next try starts clean


def find_micro_batch(try_step, start: int = 1, limit: int = 1024, log=None) -> int:
    """The largest batch size b in [start, limit] for which try_step(b) does not run out of memory.

    try_step(b) must run one real training micro-step at size b (forward + backward)
    and raise torch.OutOfMemoryError when it does not fit. Sizes are doubled from
    `start` until one fails, then bisected. Raises MemoryError if `start` does not fit.
    """
    log = log or (lambda msg: None)
    good, bad = 0, None  # largest size that fitted, smallest that failed
    b = max(1, min(start, limit))
    while bad is None and b <= limit:  # 1. double
        ok = _fits(try_step, b)
        _free_memory()
        log(f"micro-batch {b}: {'fits' if ok else 'out of memory'}")
        if ok:
            good = b
            if b == limit:
                break
            b = min(2 * b, limit)
        else:
            bad = b
    if good == 0:
        raise MemoryError(f"even a micro-batch of {b} runs out of memory")
    while bad is not None and bad - good > 1:  # 2. bisect between good and bad
        mid = (good + bad) // 2
        ok = _fits(try_step, mid)
        _free_memory()
        log(f"micro-batch {mid}: {'fits' if ok else 'out of memory'}")
        good, bad = (mid, bad) if ok else (good, mid)
    return good


def split_batch(effective: int, max_micro: int) -> tuple[int, int]:
    """(micro, accumulation) with micro x accumulation == effective and micro <= max_micro, as large as possible.

    The micro-batch must divide the effective batch exactly, or the update would not
    be the one asked for: with 24 sequences per step and room for 10, that is 8 x 3.
    """
    for micro in range(min(effective, max_micro), 0, -1):
        if effective % micro == 0:
            return micro, effective // micro
    raise ValueError(f"effective batch must be positive, got {effective}")


def make_probe(model, block_size: int, device, precision: str, reserve_bytes: int = 0):
    """A try_step for find_micro_batch: one forward + backward of `model` on random ids.

    It runs the model as training will (train mode, the same autocast, checkpointing
    and loss-chunk options), at the real block size. `reserve_bytes` are set aside
    while probing for what training allocates later and a probe does not: AdamW's
    two fp32 moments per parameter, DistributedDataParallel's gradient buckets.
    """
    model.to(device)  # where training will run it (the Trainer's .to(device) is then a no-op)
    vocab = model.config.vocab_size

    def try_step(batch_size):
        reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=device) if reserve_bytes else None
        was_training = model.training
        model.train()
        try:
            x = torch.randint(0, vocab, (batch_size, block_size), device=device)  # (b, T)
            with autocast(device, precision):
                loss = model(x, labels=x)[1]  # (the logits not kept alive by a name: as training)
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
            del reserve

    return try_step


def choose_batch(batch_size, grad_accum, effective_batch, dist, try_step=None, log=None):
    """(micro-batch, accumulation, a note or None) for --batch-size, --grad-accum and --effective-batch.

    batch_size is a number or "auto". try_step is a probe (make_probe) where memory
    can be tried (a GPU), None where it cannot (the CPU: auto keeps micro-batch 2).
    Without auto and without --effective-batch, the flags are taken as they are.
    """
    auto = batch_size == "auto"
    if effective_batch is None and not auto:
        return batch_size, grad_accum, None
    world = dist.world_size
    if effective_batch is not None and grad_accum != 1:
        raise UserError("--effective-batch sets the accumulation itself; drop --grad-accum")
    # Without --effective-batch: what the command would train with a micro-batch of 2.
    effective = effective_batch or 2 * grad_accum * world
    if effective % world:
        raise UserError(f"--effective-batch {effective} is not a multiple of the {world} processes")
    per_process = effective // world
    if not auto:
        if per_process % batch_size:
            raise UserError(f"--effective-batch {effective} is not a multiple of --batch-size {batch_size} "
                            f"x {world} process(es)")
        return batch_size, per_process // batch_size, None
    if try_step is not None:
        try:
            fits = find_micro_batch(try_step, start=1, limit=per_process, log=log)
        except MemoryError:
            raise UserError("--batch-size auto: not even one sequence fits in GPU memory; "
                            "try --checkpointing, --loss-chunk 1024 or a smaller --block-size") from None
        fits = min(dist.all_gather_object(fits))  # every process must use the same size
        how = f"up to {fits} sequence(s) fit in GPU memory"
    else:
        fits, how = 2, "nothing to probe on the CPU, default micro-batch 2"
    micro, accum = split_batch(per_process, fits)
    return micro, accum, (f"--batch-size auto: {how}; micro-batch {micro} x accumulation {accum} "
                          f"x {world} process(es) = effective batch {effective}")
