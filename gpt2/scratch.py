"""Training from scratch: a GPT-2 that starts from random numbers, and the first sanity check.

Fine-tuning starts from weights that already model English. Training from scratch
starts from the random initialisation in model.py (`GPT2._init_weights`): every matrix
drawn from N(0, 0.02^2), the projections that write into the residual stream from
N(0, (0.02 / sqrt(2 n_layer))^2), biases 0, LayerNorms 1 and 0. `new_model` builds
such a model, seeded, so that the same seed gives the same start.

The step-0 check. A model that knows nothing should spread its bet evenly over the V
tokens of the vocabulary: p(target) = 1/V, a loss of -log(1/V) = ln(V), 10.82 for
GPT-2's 50,257 tokens. The initialisation is chosen to give nearly that: the final
LayerNorm hands the LM head vectors of unit scale, the head's rows have std 0.02, so
each logit has std about 0.02 x sqrt(n_embd) (0.32 at n_embd 256, 0.55 at 768): small,
so the softmax is close to uniform. Measured on the demo corpus at seed 42: 10.81 for
4 layers x 256 and 10.80 for GPT-2 small's shape (`python benchmarks/lesson_numbers.py step0`).
On real text it can start a little lower: with tied weights, a position's final vector
still holds its own token's embedding, so a random model favours repeating the current
token, and text with repeats (runs of spaces in code) scores a bit better than chance. A
step-0 loss far above ln(V) (15, 30) means the logits start large: the model begins
confidently wrong and spends its first steps undoing that; far below means it is not
random (a loaded checkpoint, or the labels leak into the input).

The second check: a model must be able to learn one batch by heart. Train a few dozen
steps on the same few blocks and the loss should fall towards 0; if it does not, the
bug is in the model, the loss or the optimizer, not in the data
(tests/test_course.py::test_a_small_model_overfits_one_batch).

`initial_loss` is what train.py --from-scratch prints beside ln(V) before the first
step (harness/scratch.py builds the model from the flags).
"""

import math

import numpy as np
import torch

from .config import GPT2Config
from .model import GPT2


def new_model(cfg: GPT2Config, seed: int, **options) -> GPT2:
    """A GPT2 of this shape with GPT-2's random initialisation, the same for the same seed."""
    torch.manual_seed(seed)  # the init draws from torch's global generator (model.py)
    return GPT2(cfg, **options)


@torch.no_grad()
def initial_loss(model: GPT2, blocks: np.ndarray) -> float:
    """The mean loss of `model` on `blocks` (N, T), in eval mode (no dropout) and fp32."""
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.asarray(blocks).astype(np.int64))  # (N, T)
        return model(x, labels=x)[1].item()
    finally:
        model.train(was_training)


def step0_line(loss: float, vocab_size: int) -> str:
    """What train.py --from-scratch prints before training."""
    return (f"step 0: loss {loss:.2f} before any update; a model that spreads its bet evenly over "
            f"{vocab_size:,} tokens scores ln({vocab_size:,}) = {math.log(vocab_size):.2f} (gpt2/scratch.py)")

