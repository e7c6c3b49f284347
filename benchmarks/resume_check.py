"""Check: does a resumed run take the same steps as the run it continues? (issue #19)

    python benchmarks/resume_check.py                          # bf16 (as auto on AMX CPUs), tiny model
    python benchmarks/resume_check.py --precision fp32 --n-embd 768 --block 128 --threads 8

Not a test: it reports, it asserts nothing (tests/test_train.py has the test). In one
process, a Trainer runs K steps, saves resume.pt (checkpoint.state_dict + write) and goes on to N (A).
A second Trainer, built from the same files as train.py builds it, loads that resume.pt
(checkpoint.load) and runs from K to N (B). A and B share the weights' storage layout
nowhere: B's optimizer moments are torch.load's tensors, its allocations come in another
order. The script prints each step's loss and grad_norm of both, the first step where
they differ, and the largest weight difference at the end (0.0: bit-exact).

Measured on the development machine (2 cores with AMX and AVX512-BF16, torch 2.13 CPU):
bit-exact in every configuration tried: bf16 and fp32, n_embd 32 to 768, blocks of 64
and 128 tokens, 1, 2 and 8 threads, dropout 0.1, attention recompute on and off.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpt2 import checkpoint  # noqa: E402
from gpt2.config import GPT2Config  # noqa: E402
from gpt2.loop import History  # noqa: E402
from gpt2.model import GPT2  # noqa: E402
from gpt2.trainer import TrainConfig, Trainer  # noqa: E402
from gpt2.weights import load_checkpoint, save_checkpoint  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--n-embd", type=int, default=32)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--attention-recompute", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--save-at", type=int, default=5, help="K: the step saved and resumed from")
    p.add_argument("--steps", type=int, default=12, help="N: the run's length")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    directory = tempfile.mkdtemp(prefix="resume_check_")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=args.block, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=max(1, args.n_embd // 64) if args.n_embd >= 64 else 4)
    save_checkpoint(GPT2(config), os.path.join(directory, "init"))
    blocks = np.random.default_rng(0).integers(0, 50257, size=(64, args.block)).astype(np.uint16)

    def trainer():  # as run.setup builds it on the CPU: the chunked loss, the options asked
        model = load_checkpoint(os.path.join(directory, "init"), dropout=args.dropout, loss_chunk=1024,
                                attention_recompute=args.attention_recompute)
        cfg = TrainConfig(lr=1e-3, max_steps=args.steps, batch_size=2, precision=args.precision, progress=False,
                          log_every=1)
        return Trainer(model, blocks, cfg, torch.device("cpu")), History(torch.device("cpu"))

    def run(t, until):
        steps = []
        while t.step < until:
            loss, grad_norm = t.optimizer_step(t.step_micro_batches(t.step))  # t.step moves on
            steps.append((t.step, loss.item(), grad_norm.item()))
        return steps

    state = os.path.join(directory, "resume.pt")
    torch.manual_seed(42)
    a, history_a = trainer()
    run(a, args.save_at)
    checkpoint.write(checkpoint.state_dict(a, history_a, {}), state)
    steps_a = run(a, args.steps)
    torch.manual_seed(1234)  # whatever B's process had drawn: resume.pt's random state replaces it
    b, history_b = trainer()
    checkpoint.load(b, history_b, state)
    steps_b = run(b, args.steps)

    first = next((x[0] for x, y in zip(steps_a, steps_b) if x != y), None)
    for x, y in zip(steps_a, steps_b):
        print(f"step {x[0]:3d}  A loss {x[1]:.8f} grad_norm {x[2]:.8f}   B loss {y[1]:.8f} grad_norm {y[2]:.8f}"
              f"   {'same' if x == y else 'DIFFERENT'}")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    diff = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
    print(f"{args.precision}, n_embd {args.n_embd}, block {args.block}, {torch.get_num_threads()} threads: "
          f"first differing step {first}, largest weight difference at step {args.steps}: {diff:g}")


if __name__ == "__main__":
    main()
