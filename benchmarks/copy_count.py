"""Benchmark: how many elements one GPT-2 block copies (casts, layout copies) in a training step.

    python benchmarks/copy_count.py bf16      # one block of GPT-2 124M's width, 2 x 256 tokens
    python benchmarks/copy_count.py fp32

A count, not a time, so it does not depend on how busy the machine is: torch.profiler
records every aten::copy_ (what dtype casts and .contiguous() run) of one forward and
backward, with its input's shape, and the script sums the elements. The model is one
block of GPT-2 124M's width with a 1,000-token vocabulary (the block's copies, not the
LM head's), dropout 0.1, train.py's CPU defaults (the chunked loss). Random draws
(aten::bernoulli_, aten::random_) are counted too.
"""

import collections
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from gpt2.config import PRESETS  # noqa: E402
from gpt2.model import GPT2  # noqa: E402
from gpt2.precision import autocast  # noqa: E402


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    precision = argv[0] if argv else "bf16"
    cfg = dataclasses.replace(PRESETS["gpt2"].with_dropout(0.1), n_layer=1, vocab_size=1000)
    torch.manual_seed(0)
    model = GPT2(cfg, loss_chunk=1024).train()
    x = torch.randint(0, cfg.vocab_size, (2, 256))

    def step():
        with autocast(torch.device("cpu"), precision):
            loss = model(x, labels=x)[1]
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    calls = elements = 0
    draws = collections.Counter()
    for e in prof.events():
        if e.name == "aten::copy_":
            calls += 1
            elements += numel(e.input_shapes[0])
        elif e.name in ("aten::bernoulli_", "aten::random_"):
            draws[e.name] += numel(e.input_shapes[0])
    print(f"{precision}, one block, 2 x 256 tokens: aten::copy_ {calls} calls, {elements / 1e6:.2f} M elements; "
          + ", ".join(f"{k} {v / 1e6:.2f} M elements" for k, v in draws.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
