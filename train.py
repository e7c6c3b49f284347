"""Fine-tune GPT-2 on a text file.

    python train.py --lr 1e-4 --epochs 3                       # the demo corpus, gpt2
    python train.py --train-file my.txt --validation-file val.txt --out ckpt/ --fp16
    python train.py --train-file my.txt --find-lr --out lr/          # suggest a learning rate
    python train.py --train-file my.txt --lr 1e-3,1e-4,5e-5 --out runs/   # one run each, a table

run_clm.py's flags are accepted too (see README: "From run_clm.py"). The loop itself
is gpt2/trainer.py; this file only turns flags into a model, data and a TrainConfig,
and writes the results.
"""

import argparse
import os
import shutil
import sys

from gpt2.cli import (Parser, add_data_args, add_model_args, add_runtime_args, non_negative_float,
                      non_negative_int, positive_float, positive_int, probability)
from gpt2.errors import UserError, run_cli
from gpt2.hub import ALIASES


def build_parser():
    p = Parser(prog="train.py", description="Fine-tune GPT-2 on a text file (a readable run_clm.py).")
    add_model_args(p)
    g = add_data_args(p)
    g.add_argument("--train-file", "--train_file", dest="train_file",
                   help="UTF-8 text to train on (default: the Python language reference, a demo corpus)")
    g.add_argument("--validation-split", "--validation_split_percentage", dest="validation_split",
                   type=float, default=5.0,
                   help="without --validation-file, hold out this percent of the blocks (default: %(default)s)")
    add_runtime_args(p, batch_size_default=2, batch_alias="--per_device_train_batch_size", allow_auto=True)

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", "--learning_rate", dest="lr", default="5e-5",
                   help="peak learning rate (default: %(default)s, as run_clm); a comma-separated list "
                        "(1e-3,1e-4,5e-5) sweeps: one run per value in OUT/lr-<value>/, each from the same "
                        "pretrained weights, then a table comparing them. A run that fails (NaN loss, ...) "
                        "is marked failed and the others go on; exit status 0 if at least one run "
                        "completed, 1 if all failed")
    g.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=positive_float, default=3.0)
    g.add_argument("--max-steps", "--max_steps", dest="max_steps", type=int, default=0,
                   help="stop after this many optimizer steps; overrides --epochs (<= 0: off)")
    g.add_argument("--grad-accum", "--gradient_accumulation_steps", dest="grad_accum", type=positive_int, default=1,
                   help="micro-batches per optimizer step (default: %(default)s)")
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=non_negative_float, default=0.0)
    g.add_argument("--warmup-steps", "--warmup_steps", dest="warmup_steps", type=non_negative_int, default=0)
    g.add_argument("--max-grad-norm", "--max_grad_norm", dest="max_grad_norm", type=positive_float, default=1.0)
    g.add_argument("--dropout", type=probability, help="override the checkpoint's dropout probabilities")
    g.add_argument("--seed", type=int, default=42)

    g = p.add_argument_group("logging, evaluation and checkpoints")
    g.add_argument("--out", "--output_dir", dest="out", default="ckpt", help="output directory (default: %(default)s/)")
    g.add_argument("--overwrite", "--overwrite_output_dir", dest="overwrite", action="store_true",
                   help="allow writing into a non-empty --out")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run saved in --out")
    g.add_argument("--log-every", "--logging_steps", dest="log_every", type=positive_int, default=500)
    g.add_argument("--eval-every", "--eval_steps", dest="eval_every", type=non_negative_int, default=0,
                   help="evaluate every N optimizer steps (default: only at the end)")
    g.add_argument("--eval-batch-size", "--per_device_eval_batch_size", dest="eval_batch_size",
                   type=positive_int, default=8)
    g.add_argument("--save-best", action="store_true",
                   help="with --eval-every: keep the best model in OUT/best/ and end with it")
    g.add_argument("--patience", type=non_negative_int, default=0,
                   help="with --eval-every: stop after N evaluations without improvement")
    g.add_argument("--save-every", "--save_steps", dest="save_every", type=int, default=0,
                   help="write a resumable state every N steps (<= 0: only on Ctrl-C)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    # run_clm flags with no meaning here: accepted so that old commands run unchanged.
    g.add_argument("--do_train", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--do_eval", action="store_true", help=argparse.SUPPRESS)

    g = p.add_argument_group("finding the learning rate (the range test, see gpt2/lr_finder.py)")
    g.add_argument("--find-lr", action="store_true",
                   help="instead of training: take up to --find-lr-steps steps with the learning rate rising "
                        "from --lr-min to --lr-max, print the suggested rate, write OUT/lr_find.csv (and .png); "
                        "no checkpoint is written, the model's files are not changed")
    g.add_argument("--find-lr-steps", type=positive_int, default=100,
                   help="optimizer steps of the range test, at most one epoch of data (default: %(default)s)")
    g.add_argument("--lr-min", type=positive_float, default=1e-7, help="first rate tried (default: %(default)s)")
    g.add_argument("--lr-max", type=positive_float, default=1.0, help="last rate tried (default: %(default)s)")

    g = p.add_argument_group("memory and speed")
    g.add_argument("--checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    g.add_argument("--loss-chunk", type=non_negative_int, default=0,
                   help="compute the LM head + loss this many positions at a time: the (batch x block x "
                        "50257) logits never exist at once, and it is a little faster (0: off; try 1024)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--effective-batch", type=positive_int,
                   help="sequences per optimizer step, all processes together; sets the accumulation "
                        "(= N / (micro-batch x processes)). With --batch-size auto it defaults to what the "
                        "command would train with a micro-batch of 2: 2 x --grad-accum x processes")
    return p


def parse_lrs(text):
    parts = str(text).split(",")
    if any(not v.strip() for v in parts):  # "1e-3,,1e-4" or "1e-3,": a value is missing
        raise UserError(f"--lr {text}: an empty value in the comma-separated list")
    try:
        lrs = [float(v) for v in parts]
    except ValueError:
        raise UserError(f"--lr {text}: not a number or a comma-separated list of numbers") from None
    if any(not (v > 0 and v != float("inf")) for v in lrs):
        raise UserError(f"--lr {text}: the learning rate must be a positive number")
    return lrs


def check_out_is_a_directory(out):
    """--out is a directory, or a path where one can be made: no file in the way.

    Checked before training, so that a run does not end, hours later, unable to save.
    """
    path = os.path.abspath(out)
    while not os.path.exists(path):  # the nearest part of the path that exists
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "" if path == os.path.abspath(out) else f" {path}"
        raise UserError(f"--out {out}:{where} exists and is not a directory")


def check_out_dir(args):
    """Refuse to write into a non-empty directory unless told to: never lose a checkpoint."""
    out = args.out
    check_out_is_a_directory(out)
    if args.resume:
        if not os.path.isfile(os.path.join(out, "resume.pt")):
            raise UserError(f"--resume: {out}/resume.pt not found; nothing to resume in {out}")
    elif os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UserError(f"--out {out}: directory is not empty; use --overwrite to replace its contents, "
                        f"--resume to continue a run, or another --out")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if (args.save_best or args.patience) and not args.eval_every:
        raise UserError("--save-best and --patience act on evaluations during training: add --eval-every N")
    if args.find_lr:
        return find_lr(args)
    lrs = parse_lrs(args.lr)
    if len(lrs) > 1:
        return run_sweep(args, lrs)
    return run_one(args, lrs[0])


def run_sweep(args, lrs):
    """One run per learning rate, in OUT/lr-<value>/, then the table (gpt2/sweep.py)."""
    from gpt2.sweep import run_dirs, sweep

    if args.resume:
        raise UserError("--resume with several --lr values: resume one run at a time, "
                        "e.g. --lr 1e-4 --out runs/lr-1e-4 --resume")
    plan = run_dirs(args.out, lrs)
    for _, directory in plan:  # all of them before the first run starts
        check_out_dir(argparse.Namespace(**{**vars(args), "out": directory}))
    check_inputs(args)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone writes
    # What the table shows for a run that failed before writing its own run_args.json.
    described = {"model": args.model}
    return sweep(plan, lambda lr, directory: run_one(argparse.Namespace(**{**vars(args), "out": directory}), lr),
                 run_args=described, is_main=is_main)


def check_inputs(args):
    """The sweep's inputs that do not depend on the rate, checked once before the first run.

    A sweep marks a failed run and goes on with the next rate; a missing training file
    or a wrong --model path would fail every run in turn, so they are one error here.
    """
    from gpt2.data import read_text
    from gpt2.hub import is_hub_id, resolve

    for path in (args.train_file, args.validation_file):
        if path is not None:
            read_text(path)  # missing, a directory, empty, not UTF-8
    if args.model not in ALIASES and not is_hub_id(args.model):
        resolve(args.model, args.weights_dir)  # a local path: no download, only its error


def find_lr(args):
    """The learning-rate range test (gpt2/lr_finder.py): a curve and a suggestion, no checkpoint."""
    import torch
    from tqdm import tqdm

    from gpt2 import distributed, lr_finder
    from gpt2.sweep import format_lr
    from gpt2.trainer import Trainer

    if not args.lr_min < args.lr_max:
        raise UserError(f"--lr-min {args.lr_min:g} must be below --lr-max {args.lr_max:g}")
    check_out_is_a_directory(args.out)
    dist, device = distributed.setup(args.device)
    model, _, precision, _, train_blocks, _, _ = load_model_and_data(args, dist, device)
    cfg = train_config(args, args.lr_max, precision)
    torch.manual_seed(args.seed + dist.rank)  # dropout masks, as in a training run
    trainer = Trainer(model, train_blocks, None, cfg, device, args.out, dist=dist)
    # One epoch at most: every step sees text the model has not been trained on
    # yet, so a falling loss means learning, not memorising earlier batches.
    steps = min(args.find_lr_steps, trainer.steps_per_epoch)
    if steps < 5:
        raise UserError(f"one epoch is only {trainer.steps_per_epoch} optimizer step(s), too few for a curve; "
                        f"use more text, or a smaller --block-size, --batch-size or --grad-accum")
    note = f" (one epoch of data; asked for {args.find_lr_steps})" if steps < args.find_lr_steps else ""
    trainer.print(f"range test: {steps} steps{note}, lr from {args.lr_min:g} to {args.lr_max:g}, "
                  f"effective batch {trainer.micro_per_step * cfg.batch_size}, {precision}, on {device}")
    bar = tqdm(total=steps, unit="step", dynamic_ncols=True, disable=None if args.progress and dist.is_main else True)

    def progress(k, lr, loss):
        bar.update(1)
        bar.set_postfix_str(f"lr {lr:.2g}, loss {loss:.4f}", refresh=False)

    try:
        result = lr_finder.range_test(trainer, args.lr_min, args.lr_max, steps, progress=progress)
    finally:
        bar.close()
    # The weights in memory are now trained at absurd rates: they are dropped here,
    # never saved. Only the curve is written.
    if not dist.is_main:
        return 0
    print(f"stopped after {len(result.lrs)} steps: {result.stop_reason}")
    s = lr_finder.suggest(result.lrs, result.smoothed)
    paths = lr_finder.write_results(args.out, result, s)
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
    return 0


def load_model_and_data(args, dist, device):
    """The pretrained model, its tokenizer, the precision, and the text cut into blocks."""
    import torch

    from gpt2.data import build_datasets, default_cache_dir
    from gpt2.precision import resolve_precision
    from gpt2.tokenizer import Tokenizer
    from gpt2.weights import load_pretrained

    precision = resolve_precision(args.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    # Under torchrun, rank 0 downloads the model and tokenizes the text first; the
    # others wait, then find both on disk (two processes appending to the same
    # download would corrupt it, and tokenizing N times is wasted time).
    if not dist.is_main:
        dist.barrier()
    model, model_dir = load_pretrained(args.model, dropout=args.dropout, weights_dir=args.weights_dir)
    model.checkpointing = args.checkpointing
    model.loss_chunk = args.loss_chunk
    tokenizer = Tokenizer.for_checkpoint(model_dir, model.config.vocab_size)
    n_pos = model.config.n_positions
    block_size = args.block_size or min(1024, n_pos)
    if block_size > n_pos:
        raise UserError(f"--block-size {block_size} is above the model's context of {n_pos} positions")
    train_blocks, val_blocks, info = build_datasets(
        args.train_file, args.validation_file, args.validation_split, block_size, tokenizer,
        args.cache_dir or default_cache_dir())
    if dist.is_main:
        dist.barrier()  # the files are ready: let the others go
        print(info["summary"])
        if args.eval_every and val_blocks is None:
            print("warning: --eval-every without validation data (--validation-split 0 and no "
                  "--validation-file): no evaluation will run", file=sys.stderr)
    choose_batch(args, model, block_size, precision, dist, device)
    return model, tokenizer, precision, block_size, train_blocks, val_blocks, info


def train_config(args, lr, precision):
    from gpt2.trainer import TrainConfig

    return TrainConfig(
        lr=lr, epochs=args.epochs, max_steps=max(0, args.max_steps), batch_size=args.batch_size,
        grad_accum=args.grad_accum, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm, seed=args.seed, log_every=args.log_every,
        eval_every=args.eval_every, eval_batch_size=args.eval_batch_size, save_every=max(0, args.save_every),
        save_best=args.save_best, patience=args.patience, precision=precision, compile=args.compile,
        progress=args.progress,
    )


def choose_batch(args, model, block_size, precision, dist, device):
    """--batch-size auto and --effective-batch: set args.batch_size and args.grad_accum.

    The effective batch (sequences per optimizer step) is what changes the training;
    the micro-batch only changes how it is cut into forward passes. So auto keeps the
    effective batch and picks the largest micro-batch that fits and divides it, found
    by trying real steps on the GPU (gpt2/perf.py). On the CPU there is nothing to try:
    running out of memory there does not raise an error, the system swaps or kills
    the process; auto then uses the default micro-batch of 2.
    """
    import torch

    from gpt2.perf import find_micro_batch, make_probe, split_batch

    auto = args.batch_size == "auto"
    if args.effective_batch is None and not auto:
        return
    world = dist.world_size
    if args.effective_batch is not None and args.grad_accum != 1:
        raise UserError("--effective-batch sets the accumulation itself; drop --grad-accum")
    effective = args.effective_batch or 2 * args.grad_accum * world
    if effective % world:
        raise UserError(f"--effective-batch {effective} is not a multiple of the {world} processes")
    per_process = effective // world
    if not auto:
        if per_process % args.batch_size:
            raise UserError(f"--effective-batch {effective} is not a multiple of --batch-size {args.batch_size} "
                            f"x {world} process(es)")
        args.grad_accum = per_process // args.batch_size
        return
    if device.type == "cuda":
        # While probing, set aside what training adds later: AdamW's two fp32 moments
        # per parameter, and under torchrun DDP's gradient buckets (one more copy).
        n_bytes = sum(p.numel() for p in model.parameters()) * 4
        reserve = n_bytes * (2 + (world > 1))
        log = (lambda msg: print(f"--batch-size auto: {msg}")) if dist.is_main else None
        try:
            fits = find_micro_batch(make_probe(model, block_size, device, precision, reserve),
                                    start=1, limit=per_process, log=log)
        except MemoryError:
            raise UserError(f"--batch-size auto: not even one sequence of {block_size} tokens fits in GPU memory; "
                            f"try --checkpointing, --loss-chunk 1024 or a smaller --block-size") from None
        fits = min(dist.all_gather_object(fits))  # every process must use the same size
        torch.cuda.reset_peak_memory_stats(device)  # the reported peak is training's, not the probes'
        how = f"up to {fits} sequence(s) of {block_size} tokens fit in GPU memory"
    else:
        fits = 2
        how = f"nothing to probe on the {device.type}, default micro-batch 2"
    args.batch_size, args.grad_accum = split_batch(per_process, fits)
    if dist.is_main:
        print(f"--batch-size auto: {how}; micro-batch {args.batch_size} x accumulation {args.grad_accum} "
              f"x {world} process(es) = effective batch {effective}")


def run_one(args, lr):
    import torch

    from gpt2 import distributed
    from gpt2.files import atomic_path, write_json
    from gpt2.report import metrics_block
    from gpt2.trainer import Trainer
    from gpt2.weights import save_checkpoint

    check_out_dir(args)
    dist, device = distributed.setup(args.device)
    model, tokenizer, precision, block_size, train_blocks, val_blocks, info = load_model_and_data(
        args, dist, device)
    cfg = train_config(args, lr, precision)

    def write_tokenizer(directory):
        for src in tokenizer.files:
            with atomic_path(os.path.join(directory, os.path.basename(src))) as tmp:
                shutil.copyfile(src, tmp)

    # Dropout masks; seed + rank so that under torchrun each process draws its own.
    torch.manual_seed(args.seed + dist.rank)
    trainer = Trainer(model, train_blocks, val_blocks, cfg, device, args.out, dist=dist, on_save=write_tokenizer)
    if args.resume:
        trainer.load_state(os.path.join(args.out, "resume.pt"))
        if dist.is_main:
            print(f"resuming at step {trainer.step} of {trainer.total_steps}")
    train_metrics = trainer.train()
    if train_metrics is None:  # interrupted, state saved
        return 130

    # Absolute paths, so that evaluate.py finds the data from any directory.
    paths = {k: os.path.abspath(getattr(args, k)) for k in ("train_file", "validation_file") if getattr(args, k)}
    model_name = os.path.abspath(args.model) if os.path.isdir(args.model) and args.model not in ALIASES else args.model
    run_args = {**vars(args), **paths, "lr": lr, "model": model_name, "block_size": block_size, "precision": precision,
                "world_size": dist.world_size,
                "effective_batch": args.batch_size * args.grad_accum * dist.world_size,
                "total_steps": trainer.total_steps, "data": {k: v for k, v in info.items() if k != "summary"}}
    eval_metrics = None
    if val_blocks is not None:
        eval_metrics = {"epoch": train_metrics["epoch"], **trainer.evaluate()}
    if dist.is_main:
        print(metrics_block("train", train_metrics))
        if eval_metrics:
            print(metrics_block("eval", eval_metrics))
        os.makedirs(args.out, exist_ok=True)
        save_checkpoint(model, args.out)
        write_tokenizer(args.out)
        write_json(os.path.join(args.out, "run_args.json"), run_args)
        write_json(os.path.join(args.out, "train_results.json"), train_metrics)
        if eval_metrics:
            write_json(os.path.join(args.out, "eval_results.json"), eval_metrics)
        elif os.path.exists(os.path.join(args.out, "eval_results.json")):
            # an earlier run's, left by --overwrite: the table would show it as this run's
            os.remove(os.path.join(args.out, "eval_results.json"))
        write_json(os.path.join(args.out, "all_results.json"), {**train_metrics, **(eval_metrics or {})})
        write_json(os.path.join(args.out, "log_history.json"), trainer.log_history)
        resume = os.path.join(args.out, "resume.pt")
        if os.path.exists(resume):
            os.remove(resume)  # the run is complete: the final model supersedes it
        print(f"saved to {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
