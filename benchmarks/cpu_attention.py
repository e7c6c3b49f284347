"""Measure: attention with dropout on the CPU, three ways, forward + backward of one block's attention.

    python benchmarks/cpu_attention.py --block-size 1024 --batch-size 2
    python benchmarks/cpu_attention.py --block-size 256 --repeat 5

Not a test: it measures (and checks the gradients agree), it asserts nothing. GPT-2
124M's attention (12 heads of 64), causal, attention dropout 0.1, fp32, on the CPU,
where F.scaled_dot_product_attention with dropout has no fused kernel:

    math        F.scaled_dot_product_attention(dropout_p=0.1): PyTorch's math path; autograd
                keeps the softmax, the dropout mask and the dropped probabilities, three
                (B, nh, T, T) fp32 tensors (model.py without attention_recompute)
    recompute   the same under torch.utils.checkpoint (model.py's attention_recompute
                before gpt2/attention.py, and still on CUDA): nothing T x T kept;
                backward runs the whole forward again, the random dropout mask redrawn
    keepmask    gpt2/attention.py (model.py's attention_recompute on the CPU): keeps q, k,
                v and the dropout mask as bools (1 byte per T x T entry, a quarter of one
                fp32 tensor); backward rebuilds the scores and the softmax from q and k
                (two matmuls' worth, no random numbers), then the usual gradients

Per variant: forward and backward times (median of --repeat), and the T x T bytes kept
for backward, per block. The dropout masks of math and keepmask are drawn alike, so
with the same seed their outputs agree (checked below, to rounding).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpt2.attention import keep_mask_attention  # noqa: E402


def variants(p):
    sdpa = F.scaled_dot_product_attention
    return {
        "math": lambda q, k, v: sdpa(q, k, v, is_causal=True, dropout_p=p),
        "recompute": lambda q, k, v: checkpoint(sdpa, q, k, v, use_reentrant=False, is_causal=True, dropout_p=p),
        "keepmask": lambda q, k, v: keep_mask_attention(q, k, v, p),
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
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    B, nh, T, hd = args.batch_size, args.heads, args.block_size, args.head_dim
    torch.manual_seed(0)
    qkv = [torch.randn(B, nh, T, hd, requires_grad=True) for _ in range(3)]
    dy = torch.randn(B, nh, T, hd)
    results = {}
    for name, fn in variants(args.dropout).items():
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
    # math and keepmask draw the same dropout mask from the same random state: they agree.
    grads = []
    for fn in (variants(args.dropout)["math"], variants(args.dropout)["keepmask"]):
        x = [t.detach().clone().requires_grad_() for t in qkv]
        torch.manual_seed(1)
        fn(*x).backward(dy)
        grads.append([t.grad for t in x])
    err = max((a - b).abs().max().item() for a, b in zip(*grads))
    print(f"attention, B={B} nh={nh} T={T} hd={hd}, dropout {args.dropout}, fp32, {torch.get_num_threads()} threads;"
          f" gradients, keepmask vs math with the same seed: max |diff| {err:.2e}")
    print(f"{'':12} {'forward s':>10} {'backward s':>11} {'total s':>8} {'T x T kept MB':>14}")
    for name, r in results.items():
        print(f"{name:12} {r['forward_s']:10.3f} {r['backward_s']:11.3f} {r['forward_s'] + r['backward_s']:8.3f} "
              f"{r['kept_for_backward_mb']:14.1f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"config": vars(args), "grad_max_abs_diff_same_seed": err, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
