"""Dropout masks from 32-bit random words: the CPU's dropout, cheaper (skip on a first reading).

Dropout, in training, zeroes each activation with probability p and multiplies the
kept ones by 1 / (1 - p), so that the expected value of every activation is
unchanged; in evaluation it does nothing. GPT-2 applies it 37 times per forward pass
at 12 layers: after the embeddings, after each block's two residual projections, and
to each block's (B, n_head, T, T) attention probabilities.

What it costs on the CPU. To draw the mask, PyTorch calls `bernoulli_(1 - p)`, which
(outside Intel's MKL) asks the Mersenne Twister for one random number per element,
one element at a time under the generator's lock, and turns it into a double to
compare with 1 - p. In a bf16 training step of GPT-2 124M at block 256 those draws
took about 10 % of the step (issue 30), most of it the attention masks (1.6M entries
per block at 2 x 256 tokens).

The same keep probability from fewer random bits: a kept entry only needs
"u < 1 - p" for a uniform u, and 31 random bits give u to 2^-31 (4.7e-10), finer
than fp32's own spacing near 1 (6e-8). So `keep_mask` fills an int32 tensor with
`random_()` (one 32-bit Twister output per element, its 31 low bits, no conversion to
a double) and keeps where the word is below round((1 - p) x 2^31):

    P(keep) = round((1 - p) x 2^31) / 2^31         (|P(keep) - (1 - p)| <= 2^-32)

The Twister itself is still serial, but it runs once per element instead of once
plus a double compare, and the mask is a bool (1 byte per entry, kept for backward)
instead of PyTorch's noise tensor in the activations' dtype (2 or 4 bytes). Measured
with `python benchmarks/dropout_masks.py --masks-only --threads 1` (one thread of a
2-core AMD EPYC that four other jobs shared, load 10): the 37 masks of a GPT-2 124M
step at 2 x 256 tokens in 273 ms against 517 ms for bernoulli_ (1.9x). With 2 threads
on that loaded machine the compare, which PyTorch runs on both threads, waited for a
descheduled thread and the draws took longer than bernoulli_'s (docs/performance.md).

Still seeded and resumable: the words come from torch's default generator, so
torch.manual_seed fixes every mask, and the random state a checkpoint saves
(checkpoint.py) brings them back exactly on resume. But they are not PyTorch's
masks: the random stream is consumed differently (one 32-bit word per element
instead of bernoulli_'s), so a run with dropout draws other masks than it did before
this module, and than transformers' GPT2LMHeadModel would from the same seed. The
scale is applied in the activations' dtype as where(keep, x, 0) x (1 / (1 - p)), rounded once
(PyTorch's bf16 dropout first rounds 1 / (1 - p) itself to bf16: 1.109375 for p =
0.1).

On a GPU, PyTorch's fused dropout kernel draws its masks in parallel with a
counter-based generator and costs next to nothing: `Dropout` uses it there.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

WORD_BITS = 31  # random_() on int32 draws uniformly from [0, 2^31)


def keep_mask(shape, p: float, device) -> torch.Tensor:
    """A bool tensor of `shape`: True (kept) with probability 1 - p, from torch's default CPU generator."""
    threshold = round((1.0 - p) * 2**WORD_BITS)  # kept: word < threshold
    if threshold >= 2**WORD_BITS:  # p ~ 0: everything kept (2^31 itself would wrap around as an int32)
        return torch.ones(shape, dtype=torch.bool, device=device)
    words = torch.empty(shape, dtype=torch.int32, device=device).random_()  # uniform in [0, 2^31)
    return words < threshold


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout(x, p, training), with keep_mask's masks on the CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)  # the GPU's fused kernel
    # Autograd keeps the bool mask for backward: dx = where(keep, dy, 0) / (1 - p). (torch.where,
    # not x * keep: a bool factor is first converted to a tensor of x's dtype and shape.)
    return torch.where(keep_mask(x.shape, p, x.device), x, 0.0).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """nn.Dropout, with keep_mask's masks on the CPU (see the module docstring)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
