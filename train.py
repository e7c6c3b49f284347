"""Fine-tune GPT-2 on a text file.

    python train.py --lr 1e-4 --epochs 3                       # the demo corpus, gpt2
    python train.py --train-file my.txt --validation-file val.txt --out ckpt/ --fp16

run_clm.py's flags are accepted too (see README: "From run_clm.py"). The loop itself
is gpt2/trainer.py; this file only turns flags into a model, data and a TrainConfig,
and writes the results.
"""

import argparse
import os
import shutil
import sys

from gpt2.cli import (Parser, add_data_args, add_model_args, add_runtime_args, non_negative_int,
                      positive_float, positive_int, probability)
from gpt2.errors import UserError, run_cli


def build_parser():
    p = Parser(prog="train.py", description="Fine-tune GPT-2 on a text file (a readable run_clm.py).")
    add_model_args(p)
    g = p.add_argument_group("data")
    g.add_argument("--train-file", "--train_file", dest="train_file",
                   help="UTF-8 text to train on (default: the Python language reference, a demo corpus)")
    g.add_argument("--validation-split", "--validation_split_percentage", dest="validation_split",
                   type=float, default=5.0,
                   help="without --validation-file, hold out this percent of the blocks (default: %(default)s)")
    add_data_args(p)
    add_runtime_args(p, batch_size_default=2, batch_alias="--per_device_train_batch_size")

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", "--learning_rate", dest="lr", default="5e-5",
                   help="peak learning rate (default: %(default)s, as run_clm)")
    g.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=positive_float, default=3.0)
    g.add_argument("--max-steps", "--max_steps", dest="max_steps", type=int, default=0,
                   help="stop after this many optimizer steps; overrides --epochs (<= 0: off)")
    g.add_argument("--grad-accum", "--gradient_accumulation_steps", dest="grad_accum", type=positive_int, default=1,
                   help="micro-batches per optimizer step (default: %(default)s)")
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=0.0)
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

    g = p.add_argument_group("memory and speed")
    g.add_argument("--checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    g.add_argument("--loss-chunk", type=non_negative_int, default=0,
                   help="compute the LM head + loss this many positions at a time (less memory; 0: off)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    return p


def parse_lrs(text):
    try:
        lrs = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lr {text}: not a number or a comma-separated list of numbers") from None
    if not lrs or any(not (v > 0 and v != float("inf")) for v in lrs):
        raise UserError(f"--lr {text}: the learning rate must be a positive number")
    return lrs


def check_out_dir(args):
    """Refuse to write into a non-empty directory unless told to: never lose a checkpoint."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a directory")
    if args.resume:
        if not os.path.isfile(os.path.join(out, "resume.pt")):
            raise UserError(f"--resume: {out}/resume.pt not found; nothing to resume in {out}")
    elif os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UserError(f"--out {out}: directory is not empty; use --overwrite to replace its contents, "
                        f"--resume to continue a run, or another --out")


def main(argv=None):
    args = build_parser().parse_args(argv)
    lrs = parse_lrs(args.lr)
    if len(lrs) > 1:
        raise UserError("several learning rates: the sweep is not implemented yet")
    return run_one(args, lrs[0])


def run_one(args, lr):
    import torch

    from gpt2 import distributed
    from gpt2.data import build_datasets, default_cache_dir
    from gpt2.files import atomic_path, write_json
    from gpt2.precision import resolve_precision
    from gpt2.report import metrics_block
    from gpt2.tokenizer import Tokenizer
    from gpt2.trainer import TrainConfig, Trainer
    from gpt2.weights import load_pretrained, save_checkpoint

    check_out_dir(args)
    dist, device = distributed.setup(args.device)
    try:
        precision = resolve_precision(args.precision, device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls
            torch.backends.cudnn.allow_tf32 = True
        model, model_dir = load_pretrained(args.model, dropout=args.dropout, weights_dir=args.weights_dir)
        model.checkpointing = args.checkpointing
        model.loss_chunk = args.loss_chunk
        tokenizer = Tokenizer.for_checkpoint(model_dir)
        n_pos = model.config.n_positions
        block_size = args.block_size or min(1024, n_pos)
        if block_size > n_pos:
            raise UserError(f"--block-size {block_size} is above the model's context of {n_pos} positions")
        train_blocks, val_blocks, info = build_datasets(
            args.train_file, args.validation_file, args.validation_split, block_size, tokenizer,
            args.cache_dir or default_cache_dir())
        if dist.is_main:
            print(info["summary"])

        cfg = TrainConfig(
            lr=lr, epochs=args.epochs, max_steps=max(0, args.max_steps), batch_size=args.batch_size,
            grad_accum=args.grad_accum, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
            max_grad_norm=args.max_grad_norm, seed=args.seed, log_every=args.log_every,
            eval_every=args.eval_every, eval_batch_size=args.eval_batch_size, save_every=max(0, args.save_every),
            save_best=args.save_best, patience=args.patience, precision=precision, compile=args.compile,
            progress=args.progress,
        )

        def write_tokenizer(directory):
            for src in tokenizer.files:
                with atomic_path(os.path.join(directory, os.path.basename(src))) as tmp:
                    shutil.copyfile(src, tmp)

        torch.manual_seed(args.seed)  # dropout masks
        trainer = Trainer(model, train_blocks, val_blocks, cfg, device, args.out, dist=dist, on_save=write_tokenizer)
        if args.resume:
            trainer.load_state(os.path.join(args.out, "resume.pt"))
            if dist.is_main:
                print(f"resuming at step {trainer.step} of {trainer.total_steps}")
        train_metrics = trainer.train()
        if train_metrics is None:  # interrupted, state saved
            return 130

        run_args = {**vars(args), "lr": lr, "model": args.model, "block_size": block_size, "precision": precision,
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
            write_json(os.path.join(args.out, "all_results.json"), {**train_metrics, **(eval_metrics or {})})
            write_json(os.path.join(args.out, "log_history.json"), trainer.log_history)
            resume = os.path.join(args.out, "resume.pt")
            if os.path.exists(resume):
                os.remove(resume)  # the run is complete: the final model supersedes it
            print(f"saved to {args.out}/")
        return 0
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(run_cli(main))
