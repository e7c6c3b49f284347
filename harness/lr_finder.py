"""Finding a learning rate in one short run: the learning-rate range test.

Guessing a learning rate costs a full training run per guess. The range test (Leslie
Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; fastai's
`lr_find`) measures instead how the loss responds to the learning rate, in one run of
a hundred steps or so:

    lr = lr_min                                  # 1e-7: too small to change anything
    for each step:
        take one ordinary optimizer step at lr   # AdamW, accumulation, clipping, ...
        record (lr, loss)
        lr = lr * factor                         # geometric: the same number of steps
                                                 # for every power of ten, up to lr_max

Read left to right, the curve has three parts. At tiny rates the loss stays flat:
the steps are too small to matter. Then it falls: the rate is large enough to learn.
Then it shoots up: the steps overshoot and training diverges. A good rate lies on the
falling part, well before the rise.

Two details make the curve readable:

* Smoothing. One step's loss depends on which text that batch held, so the raw curve
  is noisy. We keep an exponential moving average, avg = beta * avg + (1 - beta) *
  loss with beta = 0.98 (roughly the last 50 steps), divided by 1 - beta^k after k
  steps. That division is the bias correction: avg starts at 0, so after a few steps
  it is mostly that 0; dividing by the weight the real losses have so far makes it
  an average of the losses seen (the same trick as Adam's moment estimates).
* Stopping. Once the smoothed loss is above 4x its minimum, or the loss is NaN/inf,
  the rest of the curve can only say "too high", so the test stops there.

Two suggestions are read off the smoothed curve (`suggest`):

* steepest: where the loss falls fastest as the rate grows, i.e. the most negative
  slope of the smoothed loss against log(lr). (The code uses the natural log; per
  power of ten every slope is the same number times ln 10, so the steepest point does
  not depend on the base.) There, a step in the right direction gains most, and the
  rate is still a factor of several below divergence.
* minimum / 10: the rate at the lowest smoothed loss, divided by 10. The lowest point
  itself is already at the edge (the loss is about to rise), so back off tenfold.

Both are starting points for a short sweep (train.py --lr A,B,C), not final answers:
the test sees a hundred steps at rising rates, not an epoch at one rate.

The steps are the Trainer's own (`Trainer.optimizer_step`): only the schedule differs,
a geometric rise in place of the linear decay. The model's weights change in memory
during the test, which is why train.py never saves them: after `--find-lr` the
checkpoint on disk is exactly as before, and --out receives only the curve
(lr_find.csv, and lr_find.png when matplotlib is installed).
"""

import csv
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from gpt2.errors import UserError
from gpt2.files import atomic_path
from .outdir import check
from .report import format_lr
from .run import setup
from gpt2.trainer import Trainer

BETA = 0.98          # smoothing of the loss, as fastai
MIN_STEPS = 5        # fewer points make no curve to read a slope from
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss is above this many times its minimum


@dataclass
class RangeTest:
    """The recorded curve: one entry per optimizer step taken."""
    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    smoothed: list = field(default_factory=list)
    stop_reason: str = ""


def geometric_factor(lr_min, lr_max, steps):
    """A LambdaLR factor: with base rate lr_max, step k runs at lr_min * (lr_max/lr_min)^(k/(steps-1))."""
    ratio = lr_min / lr_max

    def factor(k):
        # The scheduler is asked one step past the last: hold lr_max there.
        return ratio ** max(0.0, 1.0 - k / max(1, steps - 1))

    return factor


class Smoother:
    """Exponential moving average of the losses, bias-corrected (see the module docstring)."""

    def __init__(self, beta=BETA):
        self.beta, self.avg, self.k = beta, 0.0, 0

    def update(self, loss: float) -> float:
        self.k += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        return self.avg / (1 - self.beta ** self.k)  # the weight all losses so far carry


def smooth(losses, beta=BETA):
    smoother = Smoother(beta)
    return [smoother.update(loss) for loss in losses]


def suggest(lrs, smoothed):
    """{'steepest': lr or None, 'minimum_10': lr or None} from a smoothed curve.

    The first 10% of the points are skipped (as fastai does): the average rests on few
    losses there and wobbles. Only the part up to the minimum is searched for the
    steepest slope, so that the suggestion always lies before the loss turns up.
    Each slope spans a few points (5% of the curve) rather than two neighbours, so that
    one lucky batch cannot outbid a fall sustained over a whole stretch of rates.
    """
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    if len(lrs) < 3:
        return {"steepest": None, "minimum_10": None}
    i_min = int(np.argmin(smoothed))         # the lowest point of the curve
    start = min(len(lrs) // 10, i_min)       # skip the first 10% (but never past the minimum)
    w = max(1, len(lrs) // 20)               # each slope spans w points
    result = {"steepest": None, "minimum_10": float(lrs[i_min] / 10)}
    if i_min - start >= 1:
        w = min(w, i_min - start)
        # The stretch searched: points start .. i_min (n points). slopes[j] is the slope
        # from point start+j to point start+j+w, so j runs over 0 .. n-w-1.
        x, y = np.log(lrs[start:i_min + 1]), smoothed[start:i_min + 1]
        slopes = (y[w:] - y[:-w]) / (x[w:] - x[:-w])  # change of loss per unit of ln(lr)
        j = int(np.argmin(slopes))
        if slopes[j] < 0:  # the loss does fall somewhere; else there is no good answer
            # The rate in the middle of that stretch: point start + j + w/2.
            result["steepest"] = float(lrs[start + j + w // 2])
    return result


def range_test(trainer, lr_min, lr_max, steps, beta=BETA, diverge=DIVERGE_FACTOR, progress=None):
    """Run the range test with `trainer`'s model, optimizer and data; return a RangeTest.

    `trainer` is a fresh Trainer built with cfg.lr = lr_max. Its linear schedule is
    replaced by a geometric rise from lr_min to lr_max over `steps` steps; everything
    else (micro-batches, accumulation, precision, scaler, clipping) is its own.
    The model's weights are trained in memory: do not save them afterwards.
    `progress(k, lr, loss)` is called after each step, if given.
    """
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got {lr_min}, {lr_max}")
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer,
                                                          geometric_factor(lr_min, lr_max, steps))
    result, smoother, best = RangeTest(), Smoother(beta), math.inf
    data_step = 0  # which batch of the epoch order to use next
    # An fp16 step skipped by the scaler (overflow) leaves the rate and the weights as
    # they were: it is not a point of the curve, so it is not counted. The cap keeps a
    # scaler that never stops skipping from looping forever.
    while len(result.lrs) < steps and data_step < 2 * steps + 10:
        lr = trainer.optimizer.param_groups[0]["lr"]  # the rate this step runs at
        skipped_before = trainer.skipped
        batches = trainer.step_micro_batches(data_step)
        data_step += 1
        step_loss, _ = trainer.optimizer_step(batches)
        # Each process holds its share of the step's mean loss: the sum over processes
        # is the mean, and every process then takes the same decision to stop.
        loss = trainer.dist.all_reduce_sum(step_loss.detach().clone()).item()
        # A NaN/inf loss (not just overflowing fp16 gradients, which the scaler handles)
        # means the forward pass itself blew up: the rate is far too high.
        if not math.isfinite(loss):
            result.stop_reason = f"the loss became {loss} at lr {lr:.3g}"
            break
        if trainer.skipped > skipped_before:
            continue
        smoothed = smoother.update(loss)
        result.lrs.append(lr)
        result.losses.append(loss)
        result.smoothed.append(smoothed)
        if progress is not None:
            progress(len(result.lrs), lr, loss)
        best = min(best, smoothed)
        if smoothed > diverge * best:
            result.stop_reason = f"the smoothed loss rose above {diverge:g}x its minimum at lr {lr:.3g}"
            break
    if not result.stop_reason:
        result.stop_reason = ("reached lr_max" if len(result.lrs) == steps
                              else f"the fp16 scaler skipped {trainer.skipped} steps (overflowing gradients)")
    return result


def write_csv(path, result: RangeTest):
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["lr", "loss", "smoothed_loss"])
            for row in zip(result.lrs, result.losses, result.smoothed):
                w.writerow([repr(float(v)) for v in row])  # repr: every digit, read back exactly


def plot(path, result: RangeTest, suggestions) -> bool:
    """Draw the curve into a PNG; False (and nothing written) when matplotlib is missing."""
    try:
        import matplotlib  # an optional extra, imported only to draw
    except ImportError:
        return False
    matplotlib.use("Agg")  # draw into a file; no window, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
    labels = {"steepest": "steepest descent", "minimum_10": "minimum / 10"}
    for (key, lr), color in zip(suggestions.items(), ("C3", "C2")):
        if lr is not None:
            ax.axvline(lr, color=color, linestyle="--", label=f"{labels[key]}: {lr:.2g}")
    ax.set_xscale("log")
    # The start of the curve sets the scale: the final blow-up would squash the rest flat.
    if result.smoothed and max(result.losses) > 1.5 * result.smoothed[0]:
        ax.set_ylim(top=1.5 * result.smoothed[0])
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (nats)")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def write_results(out_dir, result: RangeTest, suggestions):
    """lr_find.csv (and lr_find.png) in out_dir; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "lr_find.csv")]
    write_csv(paths[0], result)
    png = os.path.join(out_dir, "lr_find.png")
    if plot(png, result, suggestions):
        paths.append(png)
    return paths


# --- train.py --find-lr --------------------------------------------------------------

def main(args) -> int:
    """The range test from the command line: a curve, a suggestion, no checkpoint."""
    if not args.lr_min < args.lr_max:
        raise UserError(f"--lr-min {args.lr_min:g} must be below --lr-max {args.lr_max:g}")
    if args.lr_min / args.lr_max < sys.float_info.min:  # the schedule's factor lr_min / lr_max would be 0
        raise UserError(f"--lr-min {args.lr_min:g} to --lr-max {args.lr_max:g}: over 307 powers of ten, the rates "
                        f"cannot be represented (the first would be 0); narrow the range (default 1e-7 to 1)")
    if args.find_lr_steps < MIN_STEPS:
        raise UserError(f"--find-lr-steps {args.find_lr_steps}: a curve needs at least {MIN_STEPS} steps")
    check(args.out, overwrite=True)  # a directory (or a path for one); only the curve is written there
    run = setup(args, args.lr_max)
    torch.manual_seed(args.seed + run.dist.rank)  # dropout masks, as in a training run
    trainer = Trainer(run.model, run.train_blocks, run.cfg, run.device, run.dist)
    # One epoch at most: every step sees text the model has not been trained on
    # yet, so a falling loss means learning, not memorising earlier batches.
    steps = min(args.find_lr_steps, trainer.steps_per_epoch)
    if steps < MIN_STEPS:
        raise UserError(f"one epoch is only {trainer.steps_per_epoch} optimizer step(s), too few for a curve; "
                        f"use more text, or a smaller --block-size, --batch-size or --grad-accum")
    note = f" (one epoch of data; asked for {args.find_lr_steps})" if steps < args.find_lr_steps else ""
    say = print if run.dist.is_main else (lambda *a, **k: None)
    say(f"range test: {steps} steps{note}, lr from {args.lr_min:g} to {args.lr_max:g}, effective batch "
                  f"{trainer.micro_per_step * run.cfg.batch_size}, {run.cfg.precision}, on {run.device}")
    bar = tqdm(total=steps, unit="step", dynamic_ncols=True,
               disable=None if args.progress and run.dist.is_main else True)

    def progress(k, lr, loss):
        bar.update(1)
        bar.set_postfix_str(f"lr {lr:.2g}, loss {loss:.4f}", refresh=False)

    with bar:
        result = range_test(trainer, args.lr_min, args.lr_max, steps, progress=progress)
    # The weights in memory are now trained at absurd rates: they are dropped here,
    # never saved. Only the curve is written.
    if run.dist.is_main:
        report(args.out, result)
    return 0


def report(out, result):
    """Print the stop reason and the suggestions; write the curve into `out`."""
    print(f"stopped after {len(result.lrs)} steps: {result.stop_reason}")
    s = suggest(result.lrs, result.smoothed)
    paths = write_results(out, result, s)
    print(f"curve: {', '.join(paths)}" + ("" if len(paths) > 1 else " (no plot: matplotlib is not installed)"))
    if s["minimum_10"] is None:
        raise UserError(f"only {len(result.lrs)} point(s) before the loss diverged, too few for a suggestion; "
                        f"lower --lr-max")
    # Two significant digits: the test is not more precise than that.
    shown = {k: format_lr(float(f"{v:.2g}")) for k, v in s.items() if v is not None}
    if "steepest" in shown:
        print(f"suggested learning rate: {shown['steepest']} (where the smoothed loss falls fastest)")
    else:
        print("the smoothed loss never fell over this range: lower --lr-min, or use more steps")
    print(f"second opinion: {shown['minimum_10']} (the rate at the lowest smoothed loss, / 10)")
    print(f"to compare: python train.py ... --lr {','.join(dict.fromkeys(shown.values()))} --out runs/")
