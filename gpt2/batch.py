"""Memory and speed options: a chunked LM-head loss, and finding the largest micro-batch.

The plain training step (model.py, trainer.py) is the one to read first. Everything
here is an option on top of it, switched on by a flag, that changes how much memory a
step takes or how fast it runs, never what it computes.

1. The LM head and its loss, a chunk of positions at a time (`--loss-chunk N`).

   The last layer of GPT-2 scores every position against the whole vocabulary:
   logits = hidden @ wte.T, a (B, T, V) tensor. For 2 sequences of 1024 tokens and
   V = 50,257 that is 103M numbers, 411 MB in fp32. The plain path keeps it for the
   backward pass, makes an fp32 copy of the shifted slice, and the cross-entropy keeps
   its log-softmax (another 411 MB); backward then writes gradients of the same size.
   The LM head alone wants over 1 GB, more than the twelve blocks' activations.

   But the gradient of a mean cross-entropy has a closed form. For one position with
   logits z, probabilities p = softmax(z) and target y:

       loss = logsumexp(z) - z[y]          d loss / d z = p - onehot(y)

   so `chunked_lm_loss` runs over the positions `chunk` rows at a time, and for each
   chunk computes the logits, the loss, and right away the two gradients that matter,
   d/d hidden = (p - onehot) @ W and d/d W = (p - onehot).T @ hidden. Then the chunk's
   logits are dropped. Only those gradients, (B, T, C) and (V, C), are kept until
   backward, which merely multiplies them by the incoming gradient (a scalar). No
   (B, T, V) tensor ever exists, only (chunk, V) ones, one chunk at a time.

   It does the same three matmuls as the plain path (forward, and the two gradient
   ones) and fewer passes over (rows, V) memory: no fp32 copy, no separate
   log-softmax output, no log-softmax backward. So it is a little faster, not only
   smaller (GPT-2 124M, 2 x 256 tokens, CPU: the head + loss take 2.65 s instead of
   2.98 s, 94% of it matmuls). The other common design, torch.utils.checkpoint around
   each chunk, recomputes the head matmul in backward (a fourth matmul) and still
   runs the log-softmax backward.

   What it keeps: d/d W in fp32, (V, C) = 154 MB for GPT-2 (the size of the gradient
   wte gets anyway), and, while it runs, one chunk's fp32 logits (chunk x V x 4 bytes:
   206 MB for 1024 rows). Every chunk adds its share into d/d W, a pass over those
   154 MB, so very small chunks are slow; 512 to 2048 rows is the sweet spot.

   The price: the gradient work runs in forward, so calling the model with labels in
   training mode costs the gradient even if backward is never called (evaluation runs
   under torch.no_grad(), which this detects and skips). And under fp16 the gradient
   (p - onehot) is cast to fp16 before the GradScaler's factor is applied (it is
   applied in backward), so probabilities below 6e-8 count as 0 in the two gradient
   matmuls; next to the target's -1 they weigh nothing.

2. `find_micro_batch`: the largest micro-batch that fits (`--batch-size auto`).

   Try a real forward + backward at the real sequence length, catch the GPU's
   out-of-memory error, free what the failed try held, and search: double until a
   size fails, then bisect between the last size that fitted and the first that did
   not. The effective batch (micro-batch x accumulation) is kept by `split_batch`.
"""

import gc

import torch

IGNORE_INDEX = -100  # labels with this value are not scored (PyTorch's and HF's convention)


# --- 1. the chunked LM-head loss ---------------------------------------------------

def chunked_lm_loss(hidden, weight, labels, chunk: int):
    """Mean next-token cross-entropy of logits = hidden @ weight.T, chunk positions at a time.

    hidden (B, T, C): the final hidden states; weight (V, C): the LM head (tied to wte);
    labels (B, T): the input ids, shifted here as in GPT2.forward (the prediction at t
    is scored against labels[t+1]); positions labelled -100 are ignored. Returns the
    mean over the scored positions, a 0-dim fp32 tensor. Under autocast the matmuls run
    in the autocast dtype and the softmax and loss in fp32, as in the plain path.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    C = hidden.shape[-1]
    h = hidden[:, :-1].reshape(-1, C)   # predictions at 0..T-2  (B*(T-1), C)
    targets = labels[:, 1:].reshape(-1)  # the tokens at 1..T-1   (B*(T-1),)
    want_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LMHeadLoss.apply(h, weight, targets, chunk, want_grads)


def _matmul_dtype(device_type, dtype):
    """The dtype autocast would give a matmul here: bf16/fp16 inside autocast, else `dtype`."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class _LMHeadLoss(torch.autograd.Function):
    """loss = mean_i CE(h_i @ W.T, y_i); its gradients are computed in forward, see the module docstring."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, want_grads):
        N = h.shape[0]
        dtype = _matmul_dtype(h.device.type, h.dtype)
        # We choose every dtype ourselves below (autocast does not follow us into
        # backward anyway), so switch it off here to keep in-place updates in fp32.
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)  # a 16-bit copy under autocast; the weight itself in fp32
            valid = targets != IGNORE_INDEX  # (N,)
            count = valid.sum()              # scored positions: the mean divides by this
            loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(h) if want_grads else None  # (N, C)
            grad_w = None  # (V, C) fp32, summed over the chunks
            for s in range(0, N, chunk):
                v = valid[s:s + chunk, None]                 # (n, 1)
                hc = h[s:s + chunk].to(dtype)                # (n, C)
                t = targets[s:s + chunk, None].clamp(min=0)  # (n, 1); -100 -> 0, masked out by v
                z = (hc @ w.T).float()                       # logits (n, V): the only big tensor
                z_target = z.gather(1, t)                    # (n, 1)
                # softmax(z) = exp(z - max) / sum, computed over z itself: no second
                # (n, V) tensor. (The max keeps exp from overflowing.)
                z_max = z.amax(dim=-1, keepdim=True)         # (n, 1)
                p = z.sub_(z_max).exp_()                     # (n, V)
                total = p.sum(dim=-1, keepdim=True)          # (n, 1)
                lse = z_max + total.log()                    # logsumexp(z)
                loss_sum += ((lse - z_target) * v).sum()     # -log p(target), scored rows only
                if not want_grads:
                    continue
                # d loss_i / d z_i = softmax(z_i) - onehot(y_i), still in the same memory.
                g = p.div_(total)
                g.scatter_add_(1, t, torch.full_like(total, -1.0))  # - onehot(target)
                g = g.to(dtype)
                # Ignored rows get no gradient: mask the small (n, C) sides, not g.
                grad_h[s:s + chunk] = (g @ w) * v            # (n, C)
                hv = hc * v                                  # (n, C)
                if grad_w is None:
                    grad_w = (g.T @ hv).float()              # (V, C)
                elif dtype == torch.float32:
                    grad_w.addmm_(g.T, hv)                   # in place: no (V, C) temporary
                else:
                    grad_w += (g.T @ hv).float()             # 16-bit matmul, fp32 sum over chunks
        if want_grads:
            if grad_w is None:  # no positions at all (T = 1)
                grad_w = torch.zeros_like(weight, dtype=torch.float32)
            ctx.save_for_backward(grad_h, grad_w, count)
            ctx.weight_dtype = weight.dtype
        return loss_sum / count  # NaN if nothing is scored, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count  # d mean / d sum, times the gradient flowing in
        # In place: these tensors serve this one backward. (A second backward through
        # the same graph would find them modified, and autograd says so.)
        grad_h.mul_(scale.to(grad_h.dtype))
        grad_w.mul_(scale)
        return grad_h, grad_w.to(ctx.weight_dtype), None, None, None


# --- 2. the largest micro-batch that fits ----------------------------------------

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
    from .precision import autocast

    model.to(device)  # where training will run it (the Trainer's .to(device) is then a no-op)
    vocab = model.config.vocab_size

    def try_step(batch_size):
        reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=device) if reserve_bytes else None
        was_training = model.training
        model.train()
        try:
            x = torch.randint(0, vocab, (batch_size, block_size), device=device)  # (b, T)
            with autocast(device, precision):
                _, loss = model(x, labels=x)
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
            del reserve

    return try_step
