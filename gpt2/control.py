"""Run control: what happens between two optimizer steps, and why a run stops.

The loop in trainer.py only takes optimizer steps. After each one it calls
`RunControl.after_step`, which does the bookkeeping a real run needs and decides
whether to go on:

    log        every --log-every steps: the mean loss since the last log, grad_norm
               and the learning rate, printed the Trainer's way (report.py)
    NaN check  a non-finite loss stops the run. The flag stays on the device and is
               read every 10 steps only: reading a GPU number makes the CPU wait for
               the GPU to finish everything queued, which costs throughput
    evaluate   every --eval-every steps: eval_loss, the best model so far, --patience
    save       every --save-every steps: resume.pt (checkpoint.py)
    Ctrl-C     `Interrupt` turns the signal into a request: the step in progress
               finishes, a resumable state is saved, the run ends with status 130

It returns one stop reason, or None to go on; `finish` then settles the run after
the loop. The reasons:

    "completed"       the steps ran out (--epochs / --max-steps)
    "early_stopping"  --patience evaluations in a row without a better eval_loss
    "interrupted"     Ctrl-C; resume.pt holds the state, --resume continues it

A NaN is not a reason but an error (NonFiniteLoss): the run cannot go on.

Under torchrun (distributed.py; skip this on a first reading) every process must
take the same decision at the same step, or those still going would wait for ever
in the next all-reduce. A Ctrl-C reaches the processes at slightly different
moments, and a NaN may appear on one process only, so both are put to a vote
(`dist.any`) that all processes take together.
"""

import contextlib
import os
import time

import torch
from tqdm import tqdm

from . import checkpoint
from .errors import NonFiniteLoss
from harness.report import Logger

REASONS = ("completed", "early_stopping", "interrupted")
FP16_SKIPS_IN_A_ROW = 25  # the scaler halved 65536 down to 0.002: the model has diverged


class NoInterrupt:
    """The stand-in when nobody turns signals into requests (a Trainer in a test or a notebook)."""
    requested = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class RunControl:
    def __init__(self, cfg, dist, device, interrupt, print_fn, logger=None):
        self.cfg, self.dist, self.interrupt, self.print = cfg, dist, interrupt, print_fn
        self.logger = logger or Logger(print_fn)  # the terminal; with train.py also log.jsonl, TensorBoard
        self.log_history = []  # every log line and evaluation, as dicts with their step
        self.loss_sum = 0.0    # sum of the step losses logged so far, for train_loss
        # Sum of the step losses since the last log, kept on the device (see the
        # module docstring); read and added to loss_sum at each log.
        self.window_loss = torch.zeros((), device=device)
        self.window_steps = 0
        self.non_finite = torch.zeros((), dtype=torch.bool, device=device)  # any NaN/inf loss so far
        self.best = None      # (score, step) of the best evaluation (cfg.best_metric)
        self.bad_evals = 0    # evaluations in a row without improvement, for --patience
        self.saved_step = None  # the step of OUT/resume.pt, once this run has one

    # --- called by the loop ------------------------------------------------------
    def after_step(self, t, loss, grad_norm):
        """Bookkeeping after optimizer step `t.step`; the reason to stop, or None."""
        cfg = self.cfg
        self.window_loss += loss
        self.window_steps += 1
        if cfg.precision != "fp16":  # fp16 overflows are the scaler's business (trainer.py)
            self.non_finite |= ~torch.isfinite(loss)
        at_log = t.step % cfg.log_every == 0 or (cfg.log_first_step and t.step == 1)
        if at_log or t.step % 10 == 0:
            self.check_finite(t)
        if at_log:
            self.log(t, {"loss": self.flush_window(), "grad_norm": grad_norm.item(),
                         "learning_rate": t.lr_used, "epoch": t.epoch})
        reason = None
        # As the Trainer (transformers 5): evaluating by steps also evaluates the last step,
        # so that the final weights are a candidate for the best model.
        last = cfg.eval_strategy in ("steps", None) and cfg.eval_every > 0 and t.step == t.total_steps
        if (self.due(cfg.eval_strategy, cfg.eval_every, t) or last) and t.val_blocks is not None:
            reason = self.evaluate(t)
        if self.due(cfg.save_strategy, cfg.save_every, t):
            self.check_finite(t)
            checkpoint.save(t)
        if self.dist.any(self.interrupt.requested) and reason is None:
            reason = "interrupted"
        return reason

    def finish(self, t, reason):
        """Settle the run after the loop; returns the final stop reason."""
        if reason == "interrupted" and t.step < t.total_steps:
            self.check_finite(t)
            checkpoint.save(t)  # the unlogged losses go into resume.pt, process by process
            self.print(f"interrupted at step {t.step}: resumable state saved in {t.out}; "
                       f"run the same command with --resume to continue")
            return reason
        if self.window_steps:
            self.flush_window()  # steps since the last log (early stopping): count them too
        self.check_finite(t)
        checkpoint.check_finite_weights(t)  # the last update came after the last loss
        if self.cfg.save_best and self.best is not None:
            self.dist.barrier()  # rank 0 wrote best/: the others wait for the file
            t.load_weights(os.path.join(t.out, "best"))
            self.print(f"restored the best checkpoint ({self.cfg.best_metric} {self.best[0]:.4f} "
                       f"at step {self.best[1]})")
        return reason or "completed"

    @contextlib.contextmanager
    def progress(self, t):
        """Ctrl-C handling and the progress bar, for the length of the loop."""
        # disable=None: no bar when the output is not a terminal (a log file, CI).
        bar = tqdm(total=t.total_steps, initial=t.step, unit="step", dynamic_ncols=True,
                   disable=None if self.cfg.progress and self.dist.is_main else True)
        start, t0, shown = t.step, time.time(), [0.0]

        def update():
            bar.update(1)
            if time.time() - shown[0] > 1.0:  # the bar's numbers, once a second
                tokens = (t.step - start) * t.tokens_per_step
                bar.set_postfix_str(f"{tokens / (time.time() - t0):,.0f} tok/s", refresh=False)
                shown[0] = time.time()

        with self.interrupt, bar:
            yield update

    # --- the pieces -------------------------------------------------------------
    @staticmethod
    def due(strategy, every, t) -> bool:
        """Is an evaluation (or a save) due after this step? strategy: no, steps, epoch (None: steps)."""
        if strategy == "epoch":
            return t.step % t.steps_per_epoch == 0
        return strategy != "no" and every > 0 and t.step % every == 0

    def flush_window(self):
        """Mean loss of the steps since the last log (over all processes); adds it to loss_sum."""
        total = self.dist.all_reduce_sum(self.window_loss.clone()).item()  # a sync, once per log
        mean = total / self.window_steps
        self.loss_sum += total
        self.window_loss.zero_()
        self.window_steps = 0
        return mean

    def check_finite(self, t):
        """Raise NonFiniteLoss if any process saw a NaN/inf loss (a vote), or fp16 kept overflowing."""
        non_finite = self.dist.any(bool(self.non_finite))
        if non_finite or t.skipped_in_a_row >= FP16_SKIPS_IN_A_ROW:
            what = ("the training loss became NaN/inf" if non_finite
                    else f"fp16 gradients overflowed {FP16_SKIPS_IN_A_ROW} steps in a row")
            raise NonFiniteLoss(f"{what} by step {t.step} (learning rate too high?); stopped, {checkpoint.kept(t)}")

    def log(self, t, entry):
        self.log_history.append({**entry, "step": t.step})
        self.logger.write(self.log_history[-1])

    def evaluate(self, t):
        """An evaluation during training: log it, keep the best model, count towards --patience."""
        m = t.evaluate()
        self.log(t, {"eval_loss": m["eval_loss"], "eval_accuracy": m["eval_accuracy"], "epoch": t.epoch})
        score = m[self.cfg.best_metric]
        if self.best is None:
            better = score == score  # NaN is never better: a model that overflowed is not kept as the best
        elif self.cfg.best_metric == "eval_accuracy":
            better = score > self.best[0]
        else:
            better = score < self.best[0]
        if better:
            self.best, self.bad_evals = (score, t.step), 0
            if self.cfg.save_best:
                checkpoint.check_finite_weights(t)  # a weight the evaluation never reads may still be inf
                if self.dist.is_main:
                    t.save_model(os.path.join(t.out, "best"))
            return None
        self.bad_evals += 1
        if self.cfg.patience and self.bad_evals >= self.cfg.patience:
            self.print(f"early stopping at step {t.step}: {self.cfg.best_metric} has not improved for "
                       f"{self.bad_evals} evaluations (best {self.best[0]:.4f} at step {self.best[1]})")
            return "early_stopping"
        return None
