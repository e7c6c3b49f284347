"""The loss: how well the model predicted each next token.

1. The shift. A block of token ids is both the input and the answer sheet. The
   prediction made at position t is scored against the token at t+1:

       position      0    1    2    3
       input         a    b    c    d
       target        b    c    d    -      (- is IGNORE_INDEX, -100: not scored)

   So a block of T tokens makes T-1 predictions (a->b, b->c, c->d); the last position
   has nothing left to predict, and the first token is never a target.
   `next_token_targets` builds that target row by shifting the *labels* left by one
   and padding the end with -100. One could shift the logits instead
   (`logits[:, :-1]`), but that slice of a (B, T, V) tensor is not contiguous, so
   flattening it copies all B x (T-1) x 50,257 numbers, in forward and again in
   backward; shifting the (B, T) labels costs nothing.

2. The mean. `cross_entropy` averages -log p(target) over the scored positions, in
   fp32 even under autocast: a log-softmax over 50,257 entries loses too much in
   16 bits. A batch of B blocks scores B x (T-1) positions. The model's forward,
   the evaluation (which needs sums, not means, see evaluation.py) and the chunked
   loss below all use these two functions: there is one definition of the loss.

3. The LM head a chunk at a time (`chunked_lm_loss`), the default on the CPU
   (`--loss-chunk`). The last layer scores every position against the whole
   vocabulary: logits = hidden @ wte.T, a (B, T, V) tensor. For 2 sequences of 1024
   tokens and V = 50,257 that is 103M numbers, 411 MB in fp32, kept for backward,
   and the cross-entropy keeps its log-softmax (another 411 MB); backward then writes
   gradients of the same size. The LM head alone wants over 1 GB.

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
   ones) and fewer passes over (rows, V) memory: no separate log-softmax output, no
   log-softmax backward. On the CPU, where those passes cost, it is faster, not only
   smaller (6-8 % of a GPT-2 124M step at block 256); on a GPU, where the head's
   matmul is split into smaller ones, it measured 0-14 % slower (docs/performance.md),
   so it is a CPU default and a GPU option. The other common
   design, torch.utils.checkpoint around each chunk, recomputes the head matmul in
   backward (a fourth matmul) and still runs the log-softmax backward.

   What it keeps: d/d W, (V, C) = 154 MB for GPT-2 in fp32 (the size of the gradient
   wte gets anyway; 77 MB under bf16 autocast when all positions fit one chunk: the
   matmul's 16-bit result is widened to fp32 only in backward, in the same pass that
   scales it, the same fp32 numbers as widening first), and, while it runs, one
   chunk's fp32 logits (chunk x V x 4 bytes: 206 MB for 1024 rows). Every chunk adds its share into d/d W, a pass over those
   154 MB, so very small chunks are slow; 512 to 2048 rows is the sweet spot.

   The price: the gradient work runs in forward, so calling the model with labels in
   training mode costs the gradient even if backward is never called (evaluation runs
   under torch.no_grad(), which this detects and skips). And under fp16 the gradient
   (p - onehot) is cast to fp16 before the GradScaler's factor is applied (it is
   applied in backward), so probabilities below 6e-8 count as 0 in the two gradient
   matmuls; next to the target's -1 they weigh nothing.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this value are not scored (PyTorch's and Hugging Face's convention)


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> (B, T) targets: targets[:, t] = labels[:, t+1], the last one ignored."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-log p(target) of (..., V) logits against (...) targets, in fp32; IGNORE_INDEX is skipped.

    reduction "mean": over the scored positions; "sum"; "none": one value per position.
    """
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(),  # (N, V), (N,)
                           ignore_index=IGNORE_INDEX, reduction=reduction)


# --- the LM head and its loss, a chunk of positions at a time ------------------------

def chunked_lm_loss(hidden, weight, targets, chunk: int):
    """Mean cross-entropy of logits = hidden @ weight.T against targets, chunk positions at a time.

    hidden (B, T, C): the final hidden states; weight (V, C): the LM head (tied to wte);
    targets (B, T): from next_token_targets, IGNORE_INDEX where nothing is scored.
    Returns the mean over the scored positions, a 0-dim fp32 tensor, the same number
    as cross_entropy(hidden @ weight.T, targets). Under autocast the matmuls run in the
    autocast dtype and the softmax and loss in fp32, as in the plain path.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    h = hidden.reshape(-1, hidden.shape[-1])  # (B*T, C): a view, no copy
    # Which gradients backward will ask for: none under torch.no_grad() (evaluation),
    # no d/d W when the head is frozen (LoRA, lora.py).
    grad_h = torch.is_grad_enabled() and hidden.requires_grad
    grad_w = torch.is_grad_enabled() and weight.requires_grad
    return _LMHeadLoss.apply(h, weight, targets.reshape(-1), chunk, grad_h, grad_w)


def _matmul_dtype(device_type, dtype):
    """The dtype autocast would give a matmul here: bf16/fp16 inside autocast, else `dtype`."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class _LMHeadLoss(torch.autograd.Function):
    """loss = mean_i CE(h_i @ W.T, y_i); its gradients are computed in forward (see point 3 above)."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, want_grad_h, want_grad_w):
        N = h.shape[0]
        dtype = _matmul_dtype(h.device.type, h.dtype)
        # We choose every dtype ourselves below (autocast does not follow us into
        # backward anyway), so switch it off here to keep in-place updates in fp32.
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)  # a 16-bit copy under autocast; the weight itself in fp32
            valid = targets != IGNORE_INDEX  # (N,)
            count = valid.sum()              # scored positions: the mean divides by this
            loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(h) if want_grad_h else None  # (N, C)
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
                if not (want_grad_h or want_grad_w):
                    continue
                # d loss_i / d z_i = softmax(z_i) - onehot(y_i), still in the same memory.
                g = p.div_(total)
                g.scatter_add_(1, t, torch.full_like(total, -1.0))  # - onehot(target)
                g = g.to(dtype)
                # Ignored rows get no gradient: mask the small (n, C) sides, not g.
                if want_grad_h:
                    grad_h[s:s + chunk] = (g @ w) * v        # (n, C)
                if not want_grad_w:
                    continue
                hv = hc * v                                  # (n, C)
                if grad_w is None:
                    grad_w = g.T @ hv                        # (V, C), 16-bit under autocast (see backward)
                elif dtype == torch.float32:
                    grad_w.addmm_(g.T, hv)                   # in place: no (V, C) temporary
                else:
                    grad_w = grad_w.float()                  # (a no-op from the third chunk on)
                    grad_w += (g.T @ hv).float()             # 16-bit matmul, fp32 sum over chunks
        if want_grad_w and grad_w is None:  # no positions at all
            grad_w = torch.zeros_like(weight, dtype=torch.float32)
        ctx.save_for_backward(grad_h, grad_w, count)  # None where not wanted
        ctx.weight_dtype = weight.dtype
        return loss_sum / count  # NaN if nothing is scored, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count  # d mean / d sum, times the gradient flowing in
        # In place: these tensors serve this one backward. (A second backward through
        # the same graph would find them modified, and autograd says so.)
        if grad_h is not None:
            grad_h.mul_(scale.to(grad_h.dtype))
        if grad_w is not None:
            if grad_w.dtype == torch.float32:
                grad_w = grad_w.mul_(scale)
            else:  # one chunk under autocast: widened to fp32 and scaled in one pass over (V, C), not two
                grad_w = grad_w * scale.reshape(1)  # a 1-element fp32 tensor promotes the product to fp32
            grad_w = grad_w.to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None
