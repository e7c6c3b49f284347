"""Causal attention with dropout that keeps only the dropout mask for backward (the CPU's
`attention_recompute`; skip on a first reading).

On a GPU, F.scaled_dot_product_attention runs a fused kernel that never stores the
T x T attention matrix. On the CPU, with attention dropout, it falls back to the
plain ("math") computation, and autograd keeps three (B, n_head, T, T) fp32 tensors
per block for backward: the softmax, the dropout noise, and the dropped
probabilities. For 2 x 1024 tokens that is 300 MB per block, 3.6 GB for GPT-2's 12.

What backward really needs is much less. With s = q k^T / sqrt(hd) (causal entries
set to -inf), P = softmax(s), the kept-or-dropped mask M and the keep rate 1 - p:

    forward:   D = P * M / (1 - p)          y = D @ v
    backward:  dv = D^T @ dy
               dD = dy @ v^T                dP = dD * M / (1 - p)
               ds = P * (dP - rowsum(dP * P))        (the softmax's gradient)
               dq = ds @ k / sqrt(hd)       dk = ds^T @ q / sqrt(hd)

P can be recomputed from q and k (two matmuls' worth and a softmax, no random
numbers); M cannot be redrawn cheaply, but it is only a yes/no per entry: 1 byte as a
bool, a quarter of one fp32 tensor. So `KeepMaskAttention` keeps q, k, v and M (M is
25 MB per block for 2 x 1024), and backward rebuilds P, one block at a time.
Measured on a 2-core CPU (benchmarks/cpu_attention.py, 2 x 1024, one block): forward
and backward 0.98 s, against 0.93 s for keeping everything and 1.40 s for recomputing
the whole attention forward under torch.utils.checkpoint, which draws M again.

The mask is drawn exactly as PyTorch's math path draws its dropout noise (a
bernoulli_(1 - p) over a tensor of the scores' shape), so with the same random state
both paths drop the same entries and agree to rounding (tests/test_perf.py). Like that
path under autocast, the whole computation runs in fp32.
"""

import math

import torch


class KeepMaskAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hd), causal) with dropout p, @ v; keeps q, k, v and the mask (bool)."""

    @staticmethod
    def forward(ctx, q, k, v, p):
        dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):  # fp32 throughout, as the math path
            q, k, v = q.float(), k.float(), v.float()  # (B, nh, T, hd)
            probs = _causal_softmax(q, k)  # (B, nh, T, T)
            keep = torch.empty_like(probs).bernoulli_(1 - p).bool()  # the math path's draw
            y = probs.mul_(keep).mul_(1 / (1 - p)) @ v  # (B, nh, T, hd); probs dropped in place
        ctx.save_for_backward(q, k, v, keep)
        ctx.p, ctx.dtype = p, dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        q, k, v, keep = ctx.saved_tensors
        scale, p = 1 / math.sqrt(q.shape[-1]), ctx.p
        with torch.autocast(q.device.type, enabled=False):
            dy = dy.float()
            probs = _causal_softmax(q, k)                              # P, rebuilt
            dv = (probs * keep).mul_(1 / (1 - p)).transpose(-2, -1) @ dy   # D^T dy
            d_probs = (dy @ v.transpose(-2, -1)).mul_(keep).mul_(1 / (1 - p))
            # softmax backward: P * (dP - rowsum(dP * P)), in place over dP
            ds = d_probs.sub_((d_probs * probs).sum(-1, keepdim=True)).mul_(probs)
            del probs, d_probs
            dq = (ds @ k).mul_(scale)
            dk = (ds.transpose(-2, -1) @ q).mul_(scale)
        return dq.to(ctx.dtype), dk.to(ctx.dtype), dv.to(ctx.dtype), None


def _causal_softmax(q, k):
    """softmax(q k^T / sqrt(hd)) with the causal mask: (B, nh, T, T)."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)).mul_(1 / math.sqrt(q.shape[-1]))
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)  # key after query: masked
    return torch.softmax(scores.masked_fill_(future, float("-inf")), dim=-1)


def keep_mask_attention(q, k, v, p):
    """(B, nh, T, hd) x 3 -> (B, nh, T, hd): causal attention with dropout p (training only)."""
    return KeepMaskAttention.apply(q, k, v, p)
