"""Causal attention with dropout on the CPU: written out with a cheap dropout mask, or keeping
only that mask for backward (the CPU's `attention_recompute`); skip on a first reading.

On a GPU, F.scaled_dot_product_attention runs a fused kernel that never stores the
T x T attention matrix. On the CPU, with attention dropout, it falls back to the
plain ("math") computation, and autograd keeps three (B, n_head, T, T) fp32 tensors
per block for backward: the softmax, the dropout noise, and the dropped
probabilities. For 2 x 1024 tokens that is 300 MB per block, 3.6 GB for GPT-2's 12
(`dropout_attention` below keeps the noise as a bool mask: 2.25 fp32 tensors' worth).

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

The plain path on the CPU (`dropout_attention`, block 256's default) is the same
computation left to autograd: PyTorch's math path written out, with dropout.py's
cheaper keep mask instead of the math path's bernoulli_ noise (the math path draws
one random number per T x T entry, 10 % of a bf16 step at block 256). Both draw the
mask with dropout.keep_mask, over the scores' shape, at the same point of the
forward pass, so with the same random state they drop the same entries and agree to
rounding (tests/test_perf.py). Like PyTorch's math path under autocast, both compute
in fp32.
"""

import math

import torch

from .dropout import keep_mask


class KeepMaskAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hd), causal) with dropout p, @ v; keeps q, k, v and the mask (bool)."""

    @staticmethod
    def forward(ctx, q, k, v, p):
        dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):  # fp32 throughout, as the math path
            q, k, v = _fp32(q), _fp32(k), _fp32(v)  # (B, nh, T, hd)
            probs = _causal_softmax(q, k)  # (B, nh, T, T)
            keep = keep_mask(probs.shape, p, q.device)  # (B, nh, T, T) bool, as dropout_attention
            y = _drop(probs, keep, p) @ v  # (B, nh, T, hd)
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
            dv = _drop(probs, keep, p).transpose(-2, -1) @ dy             # D^T dy
            d_probs = _drop(dy @ v.transpose(-2, -1), keep, p)
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
    # -inf where the key comes after the query, 0 elsewhere: added, not masked_fill'ed, so that
    # autograd passes the gradient straight through (masked_fill's backward copies a T x T tensor;
    # softmax's gradient is 0 there anyway). s + 0 = s: the same scores.
    future = torch.full((T, T), float("-inf"), device=q.device).triu_(1)  # (T, T)
    return torch.softmax(scores.add_(future), dim=-1)


def _fp32(t):
    """t in fp32, laid out contiguously: one copy, where .float() of a transposed view keeps its
    strides and the matmuls would copy it a second time to batch it."""
    return t.to(torch.float32, memory_format=torch.contiguous_format)


def _drop(probs, keep, p):
    """probs where kept, 0 where dropped, / (1 - p). torch.where, not probs * keep: a bool
    factor is first converted to a T x T float tensor, in forward and again in backward."""
    return torch.where(keep, probs, 0.0).mul_(1 / (1 - p))


def dropout_attention(q, k, v, p):
    """(B, nh, T, hd) x 3 -> (B, nh, T, hd) fp32: causal attention with dropout p, left to autograd.

    PyTorch's math path (what F.scaled_dot_product_attention runs on the CPU with
    dropout), written out with dropout.keep_mask's mask; autograd keeps the softmax,
    the bool mask and the dropped probabilities for backward.
    """
    with torch.autocast(q.device.type, enabled=False):  # fp32 throughout, as the math path
        q, k, v = _fp32(q), _fp32(k), _fp32(v)  # (B, nh, T, hd)
        probs = _causal_softmax(q, k)  # (B, nh, T, T)
        keep = keep_mask(probs.shape, p, q.device)  # the same draw as KeepMaskAttention's
        return _drop(probs, keep, p) @ v  # (B, nh, T, hd)


def keep_mask_attention(q, k, v, p):
    """(B, nh, T, hd) x 3 -> (B, nh, T, hd): causal attention with dropout p (training only)."""
    return KeepMaskAttention.apply(q, k, v, p)
