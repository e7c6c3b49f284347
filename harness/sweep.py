"""Several learning rates in one command: one run each, then one table.

    python train.py --lr 1e-3,1e-4,5e-5 --epochs 1 --out runs/

is three ordinary training runs, written to runs/lr-1e-3/, runs/lr-1e-4/ and
runs/lr-5e-5/, followed by the comparison table of compare.py. Three rules make the
runs comparable and the sweep robust:

* Each run starts from the same pretrained weights (the model is loaded afresh) with
  the same seed, so the data order and dropout masks are the same too: the learning
  rate is the only difference between them.
* A run that fails (the loss becomes NaN/inf because the rate is too high, or any
  other error reported to the user) is marked failed in the table, with a
  status.json in its directory saying why, and the sweep goes on with the next rate.
  A diverging rate is a result, not a reason to lose the others.
* Every run directory is checked before the first run starts: a sweep that would
  stop at its third run because runs/lr-1e-3/ already holds a checkpoint should say
  so at once, not after two runs. So are the inputs all runs share
  (`check_inputs`): a missing training file is one error, not one failed run per rate.

The exit status is 0 when at least one run completed, 1 when all failed, and 130
when Ctrl-C interrupted a run (143 for SIGTERM, ...) (the sweep stops there; that run can be resumed alone).
"""

import argparse
import math
import os
import sys

from .compare import comparison_rows, format_table
from .textfiles import read_texts
from gpt2.errors import UserError
from gpt2.files import read_json, write_json
from .hub import ALIASES, is_hub_id, resolve
from .outdir import check, run_status
from .report import format_lr


class Sweep:
    """train.py --lr a,b,c: the runs to make, each in OUT/lr-<rate>/, and what became of them.

    train.py drives it: `for lr, run_args in sweep:` one ordinary training run each, then
    `sweep.record(lr, status)` after each and `sweep.finish()` for the table and the exit
    status. Every directory and every shared input is checked when it is made.
    """

    def __init__(self, args, print_fn=print):
        if args.resume:
            raise UserError("--resume with several --lr values: resume one run at a time, "
                            "e.g. --lr 1e-4 --out runs/lr-1e-4 --resume")
        self.args, self.print = args, print_fn
        self.plan = run_dirs(args.out, args.lr)
        for _, directory in self.plan:  # all of them before the first run starts
            check(directory, overwrite=args.overwrite)
        check_inputs(args)
        self.is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone writes
        # What the table shows for a run that failed before writing its own run_args.json.
        self.described = {"model": args.model}
        self.done = []       # (directory, completed?)
        self.status = None   # a signal's exit status, once one stopped the sweep

    def __iter__(self):
        """(lr, the flags of its run: --out is its own directory)."""
        for i, (lr, directory) in enumerate(self.plan, start=1):
            if self.is_main:
                self.print(f"\n===== run {i} of {len(self.plan)}: lr {format_lr(lr)} -> {directory}/ =====")
                # An --overwrite of a run that failed before must not keep its old verdict.
                stale = os.path.join(directory, "status.json")
                if os.path.exists(stale):
                    os.remove(stale)
            yield lr, argparse.Namespace(**{**vars(self.args), "out": directory, "lr": [lr]})

    def record(self, lr, status) -> bool:
        """What the run at `lr` ended with: an exit status, or the UserError it failed with.
        False when a signal stopped it: the sweep stops there."""
        directory = dict(self.plan)[lr]
        ok = _verdict(directory, lr, status, self.described, self.is_main)
        if isinstance(status, int) and status >= 128:  # Ctrl-C 130, SIGTERM 143, ...
            rest = ", ".join(format_lr(r) for r, _ in self.plan[len(self.done) + 1:])
            if self.is_main:
                self.print("sweep interrupted" + (f"; not started: --lr {rest}" if rest else ""))
            self.status = status
            return False
        self.done.append((directory, ok))
        return True

    def finish(self) -> int:
        """The table of the runs made; the sweep's exit status (see the module docstring)."""
        if self.status is not None:
            return self.status
        if self.is_main:
            self.print("\n" + format_table(comparison_rows([d for d, _ in self.done])))
        completed = sum(ok for _, ok in self.done)
        if self.is_main and not completed:
            self.print(f"all {len(self.done)} runs failed")
        return 0 if completed else 1


def check_inputs(args):
    """The inputs every run shares, checked once before the first run.

    A sweep marks a failed run and goes on with the next rate; a missing training file
    or a wrong --model path would fail every run in turn, so they are one error here.
    """
    for path in (args.train_file, args.validation_file):
        if path is not None:
            read_texts(path, keep_linebreaks=args.keep_linebreaks)  # missing, empty, not UTF-8, bad JSON/CSV
    if args.model not in ALIASES and not is_hub_id(args.model):
        resolve(args.model, args.weights_dir)  # a local path: no download, only its error


def run_dirs(out: str, lrs) -> list[tuple[float, str]]:
    """[(lr, out/lr-<lr>), ...]; a UserError when two values are the same rate."""
    plan, seen = [], {}
    for lr in lrs:
        name = f"lr-{format_lr(lr)}"
        if name in seen:
            raise UserError(f"--lr: {seen[name]} and {lr} are the same learning rate; list each once")
        seen[name] = lr
        plan.append((lr, os.path.join(out, name)))
    return plan


def mark_failed(directory: str, message: str, run_args: dict) -> None:
    """status.json for the table; run_args.json too when the run died before writing its own.

    The table's cell gets the message up to its first "; ": what went wrong, without
    the advice that follows (printed in full when it happened, kept in "message").
    """
    os.makedirs(directory, exist_ok=True)
    write_json(os.path.join(directory, "status.json"),
               {"status": "failed", "reason": message.split("; ")[0], "message": message})
    if not os.path.exists(os.path.join(directory, "run_args.json")):
        write_json(os.path.join(directory, "run_args.json"), run_args)  # so the table shows its lr


def _finite_train_loss(directory) -> bool:
    try:  # (json reads NaN and Infinity as floats)
        loss = read_json(os.path.join(directory, "train_results.json"), {}, kind=dict).get("train_loss")
    except UserError:
        return True  # nothing to judge by: leave the verdict to the table
    return not isinstance(loss, float) or math.isfinite(loss)


def _verdict(directory, lr, status, run_args, is_main) -> bool:
    """Did the run complete? A failed one is marked in its status.json for the table."""
    run_args = {**run_args, "lr": lr}
    if isinstance(status, UserError):
        if is_main:
            print(f"error: lr {format_lr(lr)}: {status}", file=sys.stderr)
            mark_failed(directory, str(status), run_args)
        return False
    if status == 0 and is_main and not _finite_train_loss(directory):
        # In fp16 a diverged run does not stop: the scaler skips every step whose
        # gradients are NaN, and the run "completes" with a NaN loss. Failed all the same.
        mark_failed(directory, "the training loss is NaN/inf (learning rate too high?); "
                               "the fp16 scaler skipped the steps", run_args)
        return False
    if status and status < 128 and is_main and run_status(directory).get("status") != "done":
        # (a run "done" without its final evaluation keeps its model and its verdict)
        mark_failed(directory, f"ended with exit status {status}", run_args)
    return status == 0
