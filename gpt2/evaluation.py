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
* eval_top5_accuracy (ours, not run_clm's): the share where the token that comes next
  is among the 5 most likely. Fine-tuning often moves it more than the top-1.
* eval_samples (N, the number of blocks), eval_runtime (seconds; reports print it as
  h:mm:ss.xx), eval_samples_per_second, eval_steps_per_second (a step = a batch),
  rounded as the Trainer rounds them.

Two things keep it fast and its memory bounded:

* Nothing goes back to the CPU batch by batch. Each metric's sum (the losses, the
  argmax hits) and the count of predictions stay as tensors on the device, and the
  argmax is taken there: the GPU never waits for the host, and the host synchronises
  once, at the end. (A `.item()` per batch would stall the GPU at every batch.)
* The logits never exist all at once. For batch 8 x 1024 positions x 50,257 tokens
  they would take 1.6 GB in fp32, plus as much again for the log-softmax. So the
  network runs up to its final hidden states (small: 768 numbers per position), and
  the output layer, the loss and the argmax then go over LOGIT_ROWS positions at a
  time (1024 x 50,257 fp32 = 206 MB).

The metrics are one table, `METRICS` below: a metric is its value per prediction
(summed, then divided by the number of predictions) or a function of the others,
and which way is better. The training loop's log lines, --metric_for_best_model,
early stopping, the table of runs and TensorBoard all read that table, so a new
metric (top-5 accuracy, say) is one entry there and its test (docs/extending.md).

One difference from transformers 5.x, on purpose: its Trainer drops the batches
whose loss is inf or NaN from eval_loss (`logging_nan_inf_filter`, on by default),
which hides a model that overflows in fp16. Here such a loss stays inf/NaN.
"""

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .data import to_batch
from .errors import UserError
from .loss import IGNORE_INDEX, cross_entropy, next_token_targets
from .precision import autocast

# Positions whose logits are computed at once (see the module docstring).
LOGIT_ROWS = 1024


@dataclass(frozen=True)
class Metric:
    """One eval metric: how it is measured, and which way is better.

    per_prediction(logits (rows, vocab), targets (rows,)) -> (rows,) values: the metric's
    contribution of each prediction, added up over every batch and every process (in
    fp64) and divided by the number of predictions: its mean. None for a metric that is
    a function of the others (perplexity = exp(eval_loss)): then `finish(mean, metrics)`
    computes it from the metrics before it in METRICS.
    """
    per_prediction: Callable | None
    higher_is_better: bool
    logged: bool  # in the log during training (the final block always has them all)
    finish: Callable = lambda mean, metrics: mean


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


# The eval metrics, in the order the `***** eval metrics *****` block and the table of
# runs show them. Everything else (the log lines during training, --metric_for_best_model
# and its direction, early stopping, the table's columns, TensorBoard) reads this table.
METRICS = {
    "eval_loss": Metric(lambda logits, t: cross_entropy(logits, t, reduction="none"),
                        higher_is_better=False, logged=True),
    "perplexity": Metric(None, higher_is_better=False, logged=False,
                         finish=lambda mean, metrics: _exp(metrics["eval_loss"])),
    "eval_accuracy": Metric(lambda logits, t: logits.argmax(dim=-1) == t, higher_is_better=True, logged=True),
    # The next token is among the 5 most likely: fewer than 5 tokens score above it
    # (one comparison pass over the logits; cheaper than sorting them with topk).
    "eval_top5_accuracy": Metric(lambda logits, t: (logits > logits.gather(1, t[:, None])).sum(-1) < 5,
                                 higher_is_better=True, logged=False),
}
SUMMED = [name for name, m in METRICS.items() if m.per_prediction is not None]


def metric_for(name: str) -> str:
    """A metric's name as --metric_for_best_model gives it: with or without "eval_" (run_clm's "loss")."""
    for candidate in (name, f"eval_{name}"):
        if candidate in METRICS:
            return candidate
    raise ValueError(f"invalid choice: {name!r} (choose from {', '.join(METRICS)})")


def _unwrap(model):
    """The GPT2 inside DistributedDataParallel and/or torch.compile wrappers."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


@torch.no_grad()
def eval_sums(model, blocks: np.ndarray, batch_size: int, device, precision: str, progress: bool = False,
              stop=None):
    """(sums, count): each summed metric of METRICS over all next-token predictions in `blocks`.

    blocks: (N, T) token ids. sums is a 1-D tensor on the device, one sum per name of
    SUMMED (fp64 where the device has it); count = N*(T-1), the predictions. Sums, not
    means, so that shards evaluated on several devices can simply be added up.
    `stop()`, checked before each batch, ends the evaluation early (Ctrl-C): the sums
    then cover the batches done so far.
    """
    model = _unwrap(model)
    device = torch.device(device)
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no fp64
    sums = torch.zeros(len(SUMMED), dtype=acc_dtype, device=device)
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
                t = targets[r:r + LOGIT_ROWS]             # (rows,)
                keep = t != IGNORE_INDEX                  # the last position of a block predicts nothing
                with autocast(device, precision):
                    logits = model.lm_head(h[r:r + LOGIT_ROWS][keep])  # (predictions, vocab)
                t = t[keep]
                # Each prediction's values in fp32 (loss.py), added up in fp64: a sum in
                # fp32 would round differently for other batch sizes or another split
                # over GPUs, and eval_loss would change in the 7th digit.
                sums += torch.stack([METRICS[name].per_prediction(logits, t).to(acc_dtype).sum()
                                     for name in SUMMED])
                count += len(t)
    finally:
        model.train(was_training)
    return sums, count


def evaluate(model, blocks: np.ndarray, batch_size: int, device, precision: str, progress: bool = False,
             reduce=None, stop=None) -> dict:
    """The run_clm eval metrics of `model` on `blocks` (N, T): see the module docstring.

    `reduce`, if given, is applied to a 1-D tensor [sums..., count] before the division:
    under DistributedDataParallel each process evaluates its own share of the blocks
    and passes an all-reduce (sum), so that every process gets the metrics of the whole
    set. eval_steps_per_second then counts this process's steps, which run in parallel
    with the others'. None if `stop()` ended it early.
    """
    if blocks.ndim != 2:
        raise ValueError(f"blocks must be a (N, T) array, got shape {blocks.shape}")
    T = blocks.shape[1]
    if T < 2:
        raise UserError(f"blocks of {T} token make no next-token prediction; use a --block-size of 2 or more")
    start = time.time()
    sums, count = eval_sums(model, blocks, batch_size, device, precision, progress, stop)
    # One tensor, so that one all-reduce and one copy to the host carry them all.
    totals = torch.cat([sums, count.to(sums.dtype).reshape(1)])  # (len(SUMMED) + 1,)
    if reduce is not None:
        totals = reduce(totals)
    *sums, count = totals.tolist()  # the one synchronisation with the device
    runtime = time.time() - start
    if stop is not None and stop():
        return None  # stopped early: partial sums are no metrics
    if count == 0:
        raise UserError("no validation blocks to evaluate")
    means = dict(zip(SUMMED, (s / count for s in sums)))
    metrics = {}
    for name, metric in METRICS.items():
        metrics[name] = metric.finish(means.get(name), metrics)
    samples = round(count / (T - 1))
    steps = math.ceil(len(blocks) / batch_size)
    return {
        **metrics,
        "eval_runtime": round(runtime, 4),
        "eval_samples": samples,
        "eval_samples_per_second": round(samples / runtime, 3) if runtime > 0 else float("inf"),
        "eval_steps_per_second": round(steps / runtime, 3) if runtime > 0 else float("inf"),
    }


def evaluate_shared(model, blocks: np.ndarray, batch_size: int, device, precision: str, dist, progress=False,
                    stop=None) -> dict:
    """`evaluate` by every process together (distributed.py): each evaluates its own share of
    the blocks, the sums are added up, and every process gets the metrics of the whole set.
    With one process, simply `evaluate`. train.py, --do_eval and evaluate.py all measure here."""
    shard = blocks[dist.rank::dist.world_size]
    return evaluate(model, shard, batch_size, device, precision, progress, reduce=dist.all_reduce_sum, stop=stop)


def is_better(score: float, best: float | None, metric: str) -> bool:
    """Does this evaluation beat the best so far? METRICS says which way is better.

    NaN is never better: a model that overflowed is not kept as the best.
    """
    if best is None:
        return score == score  # False for NaN only
    return score > best if METRICS[metric].higher_is_better else score < best
