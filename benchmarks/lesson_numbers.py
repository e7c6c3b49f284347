"""The small measurements the lesson quotes (docs/course.md), one command each, on this machine.

    python benchmarks/lesson_numbers.py step0           # a random model's loss before any update, beside ln(V)
    python benchmarks/lesson_numbers.py checkpointing   # the time --checkpointing adds to a step
    python benchmarks/lesson_numbers.py vocab           # the LM head at 50,257 vs 50,304 tokens ("nice numbers")
    python benchmarks/lesson_numbers.py autocast        # which operations autocast runs in 16 bits
    python benchmarks/lesson_numbers.py adamw           # one AdamW step of GPT-2 124M: fused, foreach, a loop

Random GPT-2 weights (nothing is downloaded); times are medians of alternating rounds,
so that a neighbour's load on a shared machine hits both variants alike.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt2.config import GPT2Config
from gpt2.loss import chunked_lm_loss, cross_entropy, next_token_targets
from gpt2.model import GPT2  # noqa: E402
from gpt2.scratch import initial_loss, new_model, step0_line


def step0(args):
    from gpt2.data import make_blocks, tokenize_texts
    from gpt2.tokenizer import SHIPPED_DIR, Tokenizer
    from harness.datasets import demo_text
    name, text = demo_text()
    tok = Tokenizer.for_checkpoint(SHIPPED_DIR, 50257)
    blocks = make_blocks(tokenize_texts(text.splitlines(keepends=True)[:3000], tok), 256, name)[:8]
    for shape in (dict(n_layer=4, n_head=4, n_embd=256), dict(n_layer=12, n_head=12, n_embd=768)):
        model = new_model(GPT2Config(n_positions=256, **shape), seed=42)
        print(shape, step0_line(initial_loss(model, blocks), 50257))


def _median_times(variants, rounds):
    times = {name: [] for name in variants}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def checkpointing(args):
    torch.manual_seed(0)
    x = torch.randint(0, 50257, (args.batch, args.block))
    models = {flag: GPT2(GPT2Config(n_positions=args.block), checkpointing=flag, loss_chunk=1024)
              for flag in (False, True)}
    models[True].load_state_dict(models[False].state_dict())

    def step(model):
        def run():
            torch.manual_seed(1)
            model.train()
            model(x, labels=x)[1].backward()
            model.zero_grad(set_to_none=True)
        return run
    t = _median_times({"plain": step(models[False]), "checkpointing": step(models[True])}, args.rounds)
    print(f"gpt2 124M, fp32, {args.batch} x {args.block}, forward + backward: plain {t['plain']:.2f} s, "
          f"--checkpointing {t['checkpointing']:.2f} s: {100 * (t['checkpointing'] / t['plain'] - 1):+.0f} %")


def vocab(args):
    torch.manual_seed(0)
    C, N = 768, args.batch * args.block
    h = torch.randn(N, C, requires_grad=True)
    targets = next_token_targets(torch.randint(0, 50257, (args.batch, args.block))).reshape(-1)
    variants = {}
    for V in (50257, 50304):
        w = (torch.randn(V, C) * 0.02).requires_grad_()
        variants[V, "chunked (the CPU default)"] = lambda w=w: chunked_lm_loss(h, w, targets, 1024).backward()
        variants[V, "plain"] = lambda w=w: cross_entropy(h @ w.T, targets).backward()
    t = _median_times(variants, args.rounds)  # the four alternate, round after round
    for kind in ("chunked (the CPU default)", "plain"):
        a, b = t[50257, kind], t[50304, kind]
        print(f"LM head + loss, forward + backward, {N} positions, {kind}: 50,257 tokens {a * 1000:.0f} ms, "
              f"50,304 tokens {b * 1000:.0f} ms ({100 * (b / a - 1):+.1f} %)")


def adamw(args):
    model = GPT2(GPT2Config())
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    from gpt2.trainer import param_groups
    variants = {}
    for kind, opts in (("fused", dict(fused=True)), ("foreach", dict(foreach=True)), ("loop", dict(foreach=False))):
        opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-5, **opts)
        variants[kind] = opt.step
    t = _median_times(variants, args.rounds)
    print("one AdamW step of GPT-2 124M (fp32, CPU): " + ", ".join(
        f"{k} {v * 1000:.0f} ms ({t['loop'] / v:.1f}x the loop)" for k, v in t.items()))


def autocast(args):
    from torch.utils._python_dispatch import TorchDispatchMode
    seen = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            floats = {str(t.dtype).replace("torch.", "") for t in a if isinstance(t, torch.Tensor)
                      and t.is_floating_point()}
            if floats:
                seen.setdefault(func.overloadpacket.__name__, set()).update(floats)
            return func(*a, **(kw or {}))

    torch.manual_seed(0)
    model = GPT2(GPT2Config(n_positions=64, n_embd=64, n_layer=1, n_head=2), loss_chunk=args.loss_chunk)
    x = torch.randint(0, 50257, (2, 64))
    with Record():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, labels=x)[1]
        loss.backward()
    width = max(map(len, seen))
    for op, dtypes in sorted(seen.items()):
        print(f"{op:<{width}}  {', '.join(sorted(dtypes))}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("step0", "checkpointing", "vocab", "autocast", "adamw"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loss-chunk", type=int, default=0, help="autocast: 0 the plain loss, N the chunked one")
    args = p.parse_args()
    globals()[args.what](args)


if __name__ == "__main__":
    main()
