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


def main(args, lrs, train_one) -> int:
    """train.py --lr a,b,c: `train_one(args, lr)` once per rate, each in OUT/lr-<rate>/, then the table."""
    if args.resume:
        raise UserError("--resume with several --lr values: resume one run at a time, "
                        "e.g. --lr 1e-4 --out runs/lr-1e-4 --resume")
    plan = run_dirs(args.out, lrs)
    for _, directory in plan:  # all of them before the first run starts
        check(directory, overwrite=args.overwrite)
    check_inputs(args)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone writes
    # What the table shows for a run that failed before writing its own run_args.json.
    described = {"model": args.model}

    def run(lr, directory):
        return train_one(argparse.Namespace(**{**vars(args), "out": directory}), lr)

    return sweep(plan, run, run_args=described, is_main=is_main)


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


def sweep(plan, run, run_args=None, is_main=True, print_fn=print) -> int:
    """Run `run(lr, directory)` for each (lr, directory) of `plan`, then print the table.

    `run` returns an exit status (0 done, 128 + a signal's number interrupted) or raises UserError when the
    run failed. `run_args` (model, epochs, ...) describes a failed run in the table.
    Returns the sweep's exit status (see the module docstring).
    """
    done = []
    for i, (lr, directory) in enumerate(plan, start=1):
        if is_main:
            print_fn(f"\n===== run {i} of {len(plan)}: lr {format_lr(lr)} -> {directory}/ =====")
            # An --overwrite of a run that failed before must not keep its old verdict.
            stale = os.path.join(directory, "status.json")
            if os.path.exists(stale):
                os.remove(stale)
        try:
            status = run(lr, directory)
        except UserError as e:
            if is_main:
                print(f"error: lr {format_lr(lr)}: {e}", file=sys.stderr)
                mark_failed(directory, str(e), {**(run_args or {}), "lr": lr})
            done.append((directory, False))
            continue
        if status >= 128:  # a signal (Ctrl-C 130, SIGTERM 143, ...): the sweep stops there
            rest = ", ".join(format_lr(r) for r, _ in plan[i:])
            if is_main:
                print_fn("sweep interrupted" + (f"; not started: --lr {rest}" if rest else ""))
            return status
        if status == 0 and is_main and not _finite_train_loss(directory):
            # In fp16 a diverged run does not stop: the scaler skips every step whose
            # gradients are NaN, and the run "completes" with a NaN loss. Failed all the same.
            mark_failed(directory, "the training loss is NaN/inf (learning rate too high?); "
                                   "the fp16 scaler skipped the steps", {**(run_args or {}), "lr": lr})
            status = 1
        elif status and is_main and run_status(directory).get("status") != "done":
            # (a run "done" without its final evaluation keeps its model and its verdict)
            mark_failed(directory, f"ended with exit status {status}", {**(run_args or {}), "lr": lr})
        done.append((directory, status == 0))
    if is_main:
        print_fn("\n" + format_table(comparison_rows([d for d, _ in done])))
    completed = sum(ok for _, ok in done)
    if is_main and not completed:
        print_fn(f"all {len(done)} runs failed")
    return 0 if completed else 1
