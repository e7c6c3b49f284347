"""Measuring a model on held-out text: the numbers run_clm.py prints, computed once.

`evaluate.py` and `train.py` (its periodic and final evaluation) both call
`evaluate` below, so a checkpoint measured after training and measured again later
gives the same numbers. They are the keys of run_clm's `***** eval metrics *****`:

* eval_loss: the mean next-token cross-entropy, in nats, over every prediction in
  the validation blocks. A block of T tokens makes T-1 predictions (position t
  predicts token t+1; the last position has nothing to predict), so N blocks make
  N*(T-1). We add up the loss of every prediction and divide once by N*(T-1).
  The Trainer instead averages the mean loss of each batch, weighted by the batch's
  number of blocks. Every block has the same length here, so each batch mean is
  already a mean over (blocks x (T-1)) predictions and the two averages are equal,
  up to float rounding; the sum is also what several GPUs can add up (see below).
* perplexity = exp(eval_loss), as run_clm computes it (inf if that overflows). It
  reads as "the model hesitates as if between this many equally likely tokens".
* eval_accuracy: the share of those N*(T-1) positions where the most likely token
  (the argmax of the logits) is the token that actually comes next. run_clm gets it
  by `preds[:, :-1]` vs `labels[:, 1:]` over all blocks; this is the same count.
* eval_samples (N, the number of blocks), eval_runtime (seconds; reports print it as
  h:mm:ss.xx), eval_samples_per_second, eval_steps_per_second (a step = a batch),
  rounded as the Trainer rounds them.

Two things keep it fast and its memory bounded:

* Nothing goes back to the CPU batch by batch. The loss sum, the count of correct
  predictions and the count of predictions stay as tensors on the device, and the
  argmax is taken there: the GPU never waits for the host, and the host synchronises
  once, at the end. (A `.item()` per batch would stall the GPU at every batch.)
* The logits never exist all at once. For batch 8 x 1024 positions x 50,257 tokens
  they would take 1.6 GB in fp32, plus as much again for the log-softmax. So the
  network runs up to its final hidden states (small: 768 numbers per position), and
  the output layer, the loss and the argmax then go over LOGIT_ROWS positions at a
  time (1024 x 50,257 fp32 = 206 MB).

One difference from transformers 5.x, on purpose: its Trainer drops the batches
whose loss is inf or NaN from eval_loss (`logging_nan_inf_filter`, on by default),
which hides a model that overflows in fp16. Here such a loss stays inf/NaN.
"""

import math
import time

import numpy as np
import torch
from tqdm import tqdm

from .data import to_batch
from .errors import UserError
from .loss import IGNORE_INDEX, cross_entropy, next_token_targets
from .precision import autocast

# Positions whose logits are computed at once (see the module docstring).
LOGIT_ROWS = 1024


def _unwrap(model):
    """The GPT2 inside DistributedDataParallel and/or torch.compile wrappers."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


@torch.no_grad()
def eval_sums(model, blocks: np.ndarray, batch_size: int, device, precision: str, progress: bool = False,
              stop=None):
    """(loss_sum, correct, count) over all next-token predictions in `blocks`, as device tensors.

    blocks: (N, T) token ids. loss_sum is the summed cross-entropy (fp64 where the
    device has it), correct the number of argmax hits, count = N*(T-1). Sums, not
    means, so that shards evaluated on several devices can simply be added up.
    `stop()`, checked before each batch, ends the evaluation early (Ctrl-C): the sums
    then cover the batches done so far.
    """
    model = _unwrap(model)
    device = torch.device(device)
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no fp64
    loss_sum = torch.zeros((), dtype=acc_dtype, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()  # no dropout: every run of the same model gives the same numbers
    try:
        starts = range(0, len(blocks), batch_size)
        for start in tqdm(starts, desc="eval", unit="batch", disable=not progress):
            if stop is not None and stop():
                break
            x = to_batch(blocks[start:start + batch_size], device=device)  # (B, T)
            with autocast(device, precision):
                h = model.hidden_states(x)  # (B, T, C)
            targets = next_token_targets(x).reshape(-1)  # (B*T,): the next token, -100 at each block's end
            h = h.reshape(-1, h.shape[-1])                # (B*T, C)
            for r in range(0, len(targets), LOGIT_ROWS):
                with autocast(device, precision):
                    logits = model.lm_head(h[r:r + LOGIT_ROWS])  # (rows, vocab)
                t = targets[r:r + LOGIT_ROWS]                     # (rows,)
                # The loss of each position in fp32 (loss.py), added up in fp64: a sum
                # in fp32 would round differently for other batch sizes or another split
                # over GPUs, and eval_loss would change in the 7th digit.
                loss_sum += cross_entropy(logits, t, reduction="none").to(acc_dtype).sum()
                correct += (logits.argmax(dim=-1) == t).sum()  # a -100 target never matches
                count += (t != IGNORE_INDEX).sum()
    finally:
        model.train(was_training)
    return loss_sum, correct, count


def evaluate(model, blocks: np.ndarray, batch_size: int, device, precision: str, progress: bool = False,
             reduce=None, stop=None) -> dict:
    """The run_clm eval metrics of `model` on `blocks` (N, T): see the module docstring.

    `reduce`, if given, is applied to a 1-D tensor [loss_sum, correct, count] before
    the division: under DistributedDataParallel each process evaluates its own share
    of the blocks and passes an all-reduce (sum), so that every process gets the
    metrics of the whole set. eval_steps_per_second then counts this process's steps,
    which run in parallel with the others'. None if `stop()` ended it early.
    """
    if blocks.ndim != 2:
        raise ValueError(f"blocks must be a (N, T) array, got shape {blocks.shape}")
    T = blocks.shape[1]
    if T < 2:
        raise UserError(f"blocks of {T} token make no next-token prediction; use a --block-size of 2 or more")
    start = time.time()
    loss_sum, correct, count = eval_sums(model, blocks, batch_size, device, precision, progress, stop)
    # One tensor, so that one all-reduce and one copy to the host carry all three.
    sums = torch.stack([loss_sum, correct.to(loss_sum.dtype), count.to(loss_sum.dtype)])  # (3,)
    if reduce is not None:
        sums = reduce(sums)
    loss_sum, correct, count = sums.tolist()  # the one synchronisation with the device
    runtime = time.time() - start
    if stop is not None and stop():
        return None  # stopped early: partial sums are no metrics
    if count == 0:
        raise UserError("no validation blocks to evaluate")
    eval_loss = loss_sum / count
    try:
        perplexity = math.exp(eval_loss)
    except OverflowError:
        perplexity = float("inf")
    samples = round(count / (T - 1))
    steps = math.ceil(len(blocks) / batch_size)
    return {
        "eval_loss": eval_loss,
        "eval_accuracy": correct / count,
        "eval_runtime": round(runtime, 4),
        "eval_samples": samples,
        "eval_samples_per_second": round(samples / runtime, 3) if runtime > 0 else float("inf"),
        "eval_steps_per_second": round(steps / runtime, 3) if runtime > 0 else float("inf"),
        "perplexity": perplexity,
    }


def is_better(score: float, best: float | None, metric: str) -> bool:
    """Does this evaluation beat the best so far? eval_accuracy: higher is better; a loss: lower.

    NaN is never better: a model that overflowed is not kept as the best.
    """
    if best is None:
        return score == score  # False for NaN only
    return score > best if metric == "eval_accuracy" else score < best
