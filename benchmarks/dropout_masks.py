"""Benchmark: what one GPT-2 step's dropouts cost, PyTorch's bernoulli_ masks against gpt2/dropout.py's.

    python benchmarks/dropout_masks.py                 # GPT-2 124M's 37 dropouts at 2 x 256 tokens
    python benchmarks/dropout_masks.py --reps 9 --threads 1
    python benchmarks/dropout_masks.py --masks-only     # the draws alone

The dropouts of one training step, forward and backward, alone: the embeddings' and
the 24 residual ones on (B, T, C) activations (bf16, as autocast hands them over, or
fp32 with --dtype fp32) and the 12 attention ones on (B, nh, T, T) fp32 probabilities
(attention's math path computes in fp32). PyTorch's side is F.dropout (bernoulli_
over a tensor of the input's dtype, divided by 1 - p, multiplied); ours is
gpt2.dropout.dropout (31-bit words, a bool mask, torch.where). The fastest of --reps
repetitions is kept: on a shared machine the least disturbed one. It isolates what
ceiling.py's profile calls "dropout" (the attention's mask included, its multiply
not), so the difference is the time each step gains.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gpt2.dropout import dropout, keep_mask  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--p", type=float, default=0.1)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="the residual activations' dtype")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--masks-only", action="store_true", help="time the mask draws alone, no forward or backward")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, T, C, H, L = args.batch_size, args.block_size, args.n_embd, args.n_head, args.n_layer
    act = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    shapes = [((B, T, C), act)] * (1 + 2 * L) + [((B, H, T, T), torch.float32)] * L
    inputs = [torch.randn(s).to(d).requires_grad_() for s, d in shapes]

    def one_step(drop):
        for x in inputs:
            y = drop(x)
            y.backward(torch.ones_like(y))  # backward: the gradient through the mask
            x.grad = None

    sides = {"torch (bernoulli_)": lambda x: F.dropout(x, args.p, training=True),
             "gpt2.dropout": lambda x: dropout(x, args.p, training=True)}
    if args.masks_only:  # the draws alone: bernoulli_ over the input's dtype, keep_mask's bool
        sides = {"torch (bernoulli_)": lambda x: torch.empty_like(x).bernoulli_(1 - args.p),
                 "gpt2.dropout": lambda x: keep_mask(x.shape, args.p, x.device)}

        def one_step(drop):  # noqa: F811 (no backward: a mask has none)
            for x in inputs:
                drop(x)
    best = {name: float("inf") for name in sides}
    for _ in range(args.reps):  # interleaved: both sides see the same moments of a shared machine
        for name, drop in sides.items():
            t0 = time.perf_counter()
            one_step(drop)
            best[name] = min(best[name], time.perf_counter() - t0)
    what = "mask draws" if args.masks_only else "forward + backward"
    print(f"{len(shapes)} dropouts of a step ({L} layers, {B} x {T} tokens, residual {args.dtype}, attention fp32), "
          f"{what}, fastest of {args.reps}; {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}")
    for name, t in best.items():
        print(f"  {name:20} {t * 1e3:8.1f} ms")
    a, b = best.values()
    print(f"  saved per step       {(a - b) * 1e3:8.1f} ms ({a / b:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
