"""Measure: attention with dropout on the CPU, three ways, forward + backward of one block's attention.

    python benchmarks/cpu_attention.py --block-size 1024 --batch-size 2
    python benchmarks/cpu_attention.py --block-size 256 --repeat 5

Not a test: it measures (and checks the gradients agree), it asserts nothing. GPT-2
124M's attention (12 heads of 64), causal, attention dropout 0.1, fp32, on the CPU,
where F.scaled_dot_product_attention with dropout has no fused kernel:

    math        F.scaled_dot_product_attention(dropout_p=0.1): PyTorch's math path; autograd
                keeps the softmax, the dropout mask and the dropped probabilities, three
                (B, nh, T, T) fp32 tensors (model.py without attention_recompute)
    recompute   the same under torch.utils.checkpoint (model.py's attention_recompute):
                nothing T x T kept; backward runs the whole forward again, the random
                dropout mask redrawn included
    keepmask    a prototype autograd Function (below, not in the package): forward keeps
                q, k, v and the dropout mask as bools (1 byte per T x T entry, a quarter of
                one fp32 tensor); backward recomputes the scores and the softmax (two
                matmuls' worth, no random numbers), then the usual gradients

Per variant: forward and backward times (median of --repeat), and the T x T bytes kept
for backward, per block. With --mask fast the prototype draws its mask from 16-bit
random integers (p quantised to 1/65536: 0.1 -> 0.100006), about twice as fast as
bernoulli_ on this kind of CPU; default: torch.rand(...) >= p, as exact as bernoulli_.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def keep_mask(shape, p, mode, generator=None):
    """Bool mask, True where kept (probability 1 - p)."""
    if mode == "fast":
        n = math.prod(shape)
        words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, generator=generator)
        r = words.view(torch.int16)[:n].view(shape)  # four 16-bit draws per 64-bit word
        return r >= (round(p * 65536) - 32768)  # P(r < t - 32768) = t / 65536
    return torch.rand(shape, generator=generator) >= p


class KeepMaskAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + causal) with dropout, @ v; keeps the mask (bool), recomputes the softmax."""

    @staticmethod
    def forward(ctx, q, k, v, p, mode):
        B, nh, T, hd = q.shape
        scale = 1.0 / math.sqrt(hd)
        probs = _probs(q, k, scale)
        keep = keep_mask(probs.shape, p, mode)
        probs.mul_(keep).mul_(1.0 / (1.0 - p))  # the dropped probabilities, in place
        y = probs @ v
        ctx.save_for_backward(q, k, v, keep)
        ctx.p, ctx.scale = p, scale
        return y

    @staticmethod
    def backward(ctx, dy):
        q, k, v, keep = ctx.saved_tensors
        p, scale = ctx.p, ctx.scale
        probs = _probs(q, k, scale)                        # recomputed: no random numbers
        dropped = probs * keep * (1.0 / (1.0 - p))
        dv = dropped.transpose(-2, -1) @ dy
        del dropped
        dprobs = (dy @ v.transpose(-2, -1)).mul_(keep).mul_(1.0 / (1.0 - p))
        ds = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype)
        del dprobs, probs
        dq = (ds @ k).mul_(scale)
        dk = (ds.transpose(-2, -1) @ q).mul_(scale)
        return dq, dk, dv, None, None


def _probs(q, k, scale):
    T = q.shape[-2]
    s = (q * scale) @ k.transpose(-2, -1)                  # (B, nh, T, T)
    s.masked_fill_(torch.ones(T, T, dtype=torch.bool).triu_(1), float("-inf"))
    return torch.softmax(s, dim=-1)


def variants(p, mode):
    sdpa = F.scaled_dot_product_attention
    return {
        "math": lambda q, k, v: sdpa(q, k, v, is_causal=True, dropout_p=p),
        "recompute": lambda q, k, v: checkpoint(sdpa, q, k, v, use_reentrant=False, is_causal=True, dropout_p=p),
        "keepmask": lambda q, k, v: KeepMaskAttention.apply(q, k, v, p, mode),
    }


def saved_bytes(fn, q, k, v):
    """Bytes of the tensors autograd keeps for backward beyond q, k, v themselves."""
    seen, total = {q.untyped_storage().data_ptr(), k.untyped_storage().data_ptr(),
                   v.untyped_storage().data_ptr()}, [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(q, k, v)
    return total[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mask", default="exact", choices=("exact", "fast"))
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    B, nh, T, hd = args.batch_size, args.heads, args.block_size, args.head_dim
    torch.manual_seed(0)
    qkv = [torch.randn(B, nh, T, hd, requires_grad=True) for _ in range(3)]
    dy = torch.randn(B, nh, T, hd)
    results = {}
    for name, fn in variants(args.dropout, args.mask).items():
        fwd, bwd = [], []
        for _ in range(args.repeat + 1):
            for t in qkv:
                t.grad = None
            t0 = time.perf_counter()
            y = fn(*qkv)
            t1 = time.perf_counter()
            y.backward(dy)
            t2 = time.perf_counter()
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        results[name] = {"forward_s": statistics.median(fwd[1:]), "backward_s": statistics.median(bwd[1:]),
                         "kept_for_backward_mb": saved_bytes(fn, *qkv) / 2**20}
    # The gradients agree without dropout (the masks differ between methods).
    q0 = [t.detach().clone().requires_grad_() for t in qkv]
    q1 = [t.detach().clone().requires_grad_() for t in qkv]
    F.scaled_dot_product_attention(*q0, is_causal=True).backward(dy)
    KeepMaskAttention.apply(*q1, 0.0, args.mask).backward(dy)
    err = max((a.grad - b.grad).abs().max().item() for a, b in zip(q0, q1))
    print(f"attention, B={B} nh={nh} T={T} hd={hd}, dropout {args.dropout}, fp32, {torch.get_num_threads()} threads,"
          f" mask {args.mask}; gradients vs SDPA at dropout 0: max |diff| {err:.2e}")
    print(f"{'':12} {'forward s':>10} {'backward s':>11} {'total s':>8} {'T x T kept MB':>14}")
    for name, r in results.items():
        print(f"{name:12} {r['forward_s']:10.3f} {r['backward_s']:11.3f} {r['forward_s'] + r['backward_s']:8.3f} "
              f"{r['kept_for_backward_mb']:14.1f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"config": vars(args), "grad_max_abs_diff_no_dropout": err, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
