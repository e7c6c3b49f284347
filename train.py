"""Fine-tune GPT-2 on a text file.

    python train.py --lr 1e-4 --epochs 3                       # the demo corpus, gpt2
    python train.py --train-file my.txt --validation-file val.txt --out ckpt/ --fp16
    python train.py --train-file my.txt --find-lr --out lr/          # suggest a learning rate
    python train.py --train-file my.txt --lr 1e-3,1e-4,5e-5 --out runs/   # one run each, a table
    python train.py --model gpt2-xl --lora 8 --checkpointing --plan  # will it fit? (no download)

run_clm.py's flags are accepted too (docs/run_clm.md). One run reads
top to bottom: parse the flags, set up (harness/run.py), train (gpt2/loop.py, with
harness/hooks.py writing the run directory), save (harness/outdir.py).
"""

import os
import sys

import torch

from gpt2 import checkpoint, loop
from gpt2.distributed import leave_together
from gpt2.errors import NonFiniteLoss, UserError, out_of_memory, run_cli
from gpt2.evaluation import evaluate
from gpt2.lora import adapter_dir, merged_model, save_adapter
from gpt2.loop import History
from gpt2.trainer import Trainer
from gpt2.weights import save_checkpoint
from harness import hub, lr_finder, outdir, plan, sharded, sweep
from harness.cli import train_parser
from harness.hooks import RunHooks, bytes_needed
from harness.report import Logger, metrics_block, summary_writer_class
from harness.run import describe, setup
from harness.signals import Interrupt


def main(argv=None):
    args = train_parser().parse_args(argv)
    lrs = check_flags(args)
    code = run_mode(args, lrs)
    leave_together()  # under torchrun: every process leaves the group at once
    return code


def run_mode(args, lrs):
    """What the flags ask for: a plan, a range test, an evaluation, a sweep, or one run."""
    if args.plan:
        return plan.main(args)
    if args.find_lr:
        return lr_finder.main(args)
    if args.do_eval and not args.do_train:
        return evaluate_only(args)
    if len(lrs) > 1:
        return sweep.main(args, lrs, train)
    return train(args, lrs[0])


def train(args, lr):
    """One fine-tuning run: set up, train, save. Returns 0, or 128 + the signal's number
    after Ctrl-C (130), SIGTERM (143), SIGHUP or SIGUSR1 (harness/signals.py)."""
    state = checked_state(args, lr)  # the resumable state to continue from, if any
    run = setup(args, lr)  # model, tokenizer, blocks, TrainConfig, device, processes
    torch.manual_seed(args.seed + run.dist.rank)  # dropout masks: each process its own
    out = outdir.RunDir(args.out, run.dist.is_main)

    def save_model(directory, weights=None):  # a model directory: weights, config, tokenizer (and adapter/)
        # Every process calls it: --fsdp gathers the weights first (a collective), unless given; rank 0 writes.
        weights = sharded.gather_weights(run.model) if weights is None else weights
        if not run.dist.is_main:
            return
        save_checkpoint(merged_model(run.model) if args.lora else run.model, directory, weights)
        out.copy_tokenizer(run.tokenizer.files, directory)  # the model's own tokenizer, carried on
        if args.lora:
            save_adapter(run.model, adapter_dir(directory), base_model=args.model)

    interrupt = Interrupt(announce=run.dist.is_main)
    logger = Logger(out_dir=args.out, tensorboard=wants_tensorboard(args)) if run.dist.is_main else \
        Logger(print_fn=lambda *a, **k: None)
    trainer = Trainer(run.model, run.train_blocks, run.cfg, run.device, run.dist)
    hooks = (sharded.ShardedRunHooks if run.cfg.fsdp else RunHooks)(
        args.out, run.dist, logger, interrupt, save_model, run.data_info, run.cfg.progress,
        run_args=describe(args, run, trainer.total_steps))
    history = History(run.device)
    out.claim(args.overwrite, state, need_bytes=bytes_needed(trainer))
    try:
        with interrupt:  # from here on, a signal keeps what was earned (harness/signals.py)
            for note in run.notes:
                hooks.print(note)
            if state:
                resume(trainer, history, state, run.data_info, hooks)
            out.start()
            reason, train_metrics = loop.train(trainer, run.val_blocks, hooks, history)
            if reason == "interrupted":
                hooks.print(f"interrupted at step {trainer.step}: resumable state saved in {args.out}; "
                            f"run the same command with --resume to continue")
                out.set_status("interrupted", step=trainer.step, signal=interrupt.name)
                return interrupt.exit_code
            with interrupt.deferred():  # the trained model is written whole, even if Ctrl-C comes twice
                save_run(out, save_model, describe(args, run, trainer.total_steps), train_metrics, history.log)
            return evaluate_and_finish(out, trainer, run.val_blocks, train_metrics, interrupt, hooks)
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM): stop at once
        out.record_failure("interrupted", f"{interrupt.name} twice")
        raise
    except NonFiniteLoss as e:  # say what is left to go back to
        out.record_failure("failed", str(e))
        raise NonFiniteLoss(f"{e}, {hooks.kept()}") from None
    except Exception as e:  # a full disk, ...: status.json says why
        out.record_failure("failed", str(e))
        raise
    finally:
        hooks.close()
        out.release()


def resume(trainer, history, state, data_info, hooks):
    """Continue from a resumable state: the trainer, the history, and log.jsonl cut back to it."""
    (sharded.load if trainer.cfg.fsdp else checkpoint.load)(trainer, history, state, data_info)
    hooks.resumed(trainer, history)


def checked_state(args, lr):
    """The state to resume from (or None), checked before any work: a checkpoint is never lost,
    and a resume that would be refused loads no model and no data."""
    state = resume_state(args)
    outdir.check(args.out, args.overwrite, state)
    if state:
        outdir.check_resume_flags(state, args, lr)
    return state


def resume_state(args):
    """--resume: OUT/resume.pt, the newest state (every save writes it, checkpoint-<step>/ folders
    or not); --resume-from-checkpoint PATH: that state, or a checkpoint folder's; else None."""
    if args.resume_from:
        return outdir.state_file(args.resume_from)
    return os.path.join(args.out, "resume.pt") if args.resume else None


def wants_tensorboard(args) -> bool:
    return any(to in ("tensorboard", "all") for to in args.report_to)


def save_run(out, save_model, run_args, train_metrics, log_history):
    """The trained model first, then what describes it; status "saving" until it is all there."""
    out.set_status("saving")
    if out.is_main:
        print(metrics_block("train", train_metrics))
    save_model(out.path)  # every process (--fsdp gathers the weights); rank 0 writes
    out.write_json("run_args.json", run_args)
    out.write_json("train_results.json", train_metrics)
    out.write_json("log_history.json", log_history)
    out.remove("resume.pt")  # the run is complete: the final model supersedes it


def evaluate_and_finish(out, trainer, val_blocks, train_metrics, interrupt, hooks):
    """The final evaluation, then the results. The model is saved already: a stop signal skips
    the evaluation, and an evaluation that fails (out of memory at --eval-batch-size) costs
    only its own metrics; either way the run is "done", with a note that says why."""
    eval_metrics, failed = None, None
    if val_blocks is not None and not interrupt.requested:
        try:
            eval_metrics = trainer.evaluate(val_blocks, stop=lambda: interrupt.requested)
        except (RuntimeError, MemoryError, OSError) as e:  # torch's out of memory is a RuntimeError
            if not (out_of_memory(e) or isinstance(e, OSError)):
                raise  # a bug: its traceback
            failed = (str(e).splitlines() or [type(e).__name__])[0][:300]
    skipped = interrupt.requested
    if eval_metrics and not skipped:
        eval_metrics = {"epoch": train_metrics["epoch"], **eval_metrics}
        if trainer.dist.is_main:
            print(metrics_block("eval", eval_metrics))
        out.write_json("eval_results.json", eval_metrics)
    out.write_json("all_results.json", {**train_metrics, **(eval_metrics or {})})
    why = f"{interrupt.name}" if skipped else f"it failed: {failed}" if failed else None
    if why:
        out.set_status("done", note=f"no final evaluation: {why}")
    else:
        out.remove(outdir.STATUS)  # a finished run needs no explanation: its results say it all
    saved = os.path.join(os.path.normpath(out.path), "")  # runs/x/, never runs/x//
    hooks.print(f"saved to {saved}" + (f" (no final evaluation: {why}; evaluate.py can run it)" if why else ""))
    if failed:
        print(f"error: the final evaluation failed ({failed}); the trained model is saved in {out.path}/",
              file=sys.stderr)
        return 1
    return interrupt.exit_code if skipped else 0


def evaluate_only(args):
    """run_clm's --do_eval without --do_train: the eval metrics of --model, into --out."""
    run = setup(args, lr=0.0)
    if run.val_blocks is None:
        raise UserError("--do_eval: no validation data (--validation-split 0 and no --validation-file)")
    shard = run.val_blocks[run.dist.rank::run.dist.world_size]  # each process its share, the sums added up
    metrics = evaluate(run.model.to(run.device), shard, run.cfg.eval_batch_size, run.device, run.cfg.eval_precision,
                       reduce=run.dist.all_reduce_sum)
    if run.dist.is_main:
        print(metrics_block("eval", metrics))
        out = outdir.RunDir(args.out).claim(add=True)  # results beside whatever is there
        try:
            out.merge_results("eval", metrics)
        finally:
            out.release()
    return 0


def check_flags(args):
    """Combinations that cannot work, refused before anything is loaded; the learning rates."""
    hub.check_endpoint()
    lrs = parse_lrs(args.lr)
    sharded.check_flags(args, len(lrs))
    sharded.check_state_kind(args)
    for lr in lrs:
        if lr * args.weight_decay >= 1:
            raise UserError(f"--weight-decay {args.weight_decay:g} with --lr {lr:g}: each step would multiply the "
                            f"weights by 1 - lr x weight_decay <= 0; use a weight decay below {1 / lr:g}")
    evaluating = args.eval_strategy in ("steps", "epoch") or (args.eval_strategy is None and args.eval_every)
    if (args.save_best or args.patience) and not evaluating:
        raise UserError("--save-best and --patience act on evaluations during training: add --eval-every N")
    if args.resume and args.resume_from:
        raise UserError("--resume continues --out; --resume-from-checkpoint continues a given state: pick one")
    if args.resume_from and not os.path.isfile(outdir.state_file(args.resume_from)):
        raise UserError(f"--resume-from-checkpoint {args.resume_from}: no resumable state there")
    bad = [to for to in args.report_to if to not in ("none", "tensorboard", "all")]
    if bad:
        raise UserError(f"--report-to {' '.join(bad)}: only tensorboard is built in (or none)")
    if wants_tensorboard(args):
        summary_writer_class()  # a one-line error now if the package is missing, not after training
    return lrs


def parse_lrs(text):
    """--lr: one learning rate, or a comma-separated list of them (a sweep)."""
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


if __name__ == "__main__":
    sys.exit(run_cli(main))
