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

from gpt2 import checkpoint, loop, settings
from gpt2.distributed import leave_together, lost_a_process
from gpt2.errors import NonFiniteLoss, UserError, out_of_memory, run_cli
from gpt2.evaluation import evaluate_shared
from gpt2.loop import History
from gpt2.trainer import Trainer
from harness import lr_finder, outdir, plan, sharded, streams
from harness.cli import check_train_flags, train_parser, wants_tensorboard
from harness.hooks import ESTIMATE_AFTER, RunHooks, bytes_needed
from harness.report import Logger, metrics_block
from harness.run import describe, setup
from harness.signals import Interrupt
from harness.sweep import Sweep


def main(argv=None):
    args = train_parser().parse_args(argv)
    check_train_flags(args)
    code = run_mode(args)
    leave_together()  # under torchrun: every process leaves the group at once
    return code


def run_mode(args):
    """What the flags ask for: a plan, a range test, an evaluation, a sweep, or one run."""
    if args.plan:
        return plan.main(args)
    if args.find_lr:
        return lr_finder.main(args)
    if args.do_eval and not args.do_train:
        return evaluate_only(args)
    if len(args.lr) > 1:
        return sweep(args)
    return train(args, args.lr[0])


def sweep(args):
    """--lr a,b,c: one ordinary run per rate, each in OUT/lr-<rate>/, then one table (harness/sweep.py)."""
    runs = Sweep(args)
    for lr, run_args in runs:
        try:
            status = train(run_args, lr)
        except UserError as e:  # a failed run is a result: the next rate runs
            status = e
        if not runs.record(lr, status):
            break  # a signal stopped this run: the sweep stops there
    return runs.finish()


def train(args, lr):
    """One fine-tuning run: set up, train, save. Returns 0, or 128 + the signal's number
    after Ctrl-C (130), SIGTERM (143), SIGHUP or SIGUSR1 (harness/signals.py)."""
    state = checked_state(args, lr)  # the resumable state to continue from, if any
    run = setup(args, lr)  # model, tokenizer, blocks, TrainConfig, device, processes
    torch.manual_seed(args.seed + run.dist.rank)  # dropout masks: each process its own
    out = outdir.RunDir(args.out, run.dist.is_main)
    interrupt = Interrupt(announce=run.dist.is_main)
    logger = Logger(out_dir=args.out, tensorboard=wants_tensorboard(args)) if run.dist.is_main else \
        Logger(print_fn=lambda *a, **k: None)
    trainer = Trainer(run.model, run.train_blocks, run.cfg, run.device, run.dist)
    hooks = (sharded.ShardedRunHooks if run.cfg.fsdp else RunHooks)(
        args.out, run, logger, interrupt, base_model=args.model, run_args=describe(args, run, trainer.total_steps))
    history = History(run.device)
    out.claim(args.overwrite, state, need_bytes=bytes_needed(trainer), model_dir=run.model_dir)
    try:
        with interrupt:  # from here on, a signal keeps what was earned (harness/signals.py)
            for note in run.notes:
                hooks.print(note)
            if state:
                resume(trainer, history, state, run.data_info, hooks)
            out.start(hooks.run_args)  # run_args.json now: a stopped run can be evaluated (harness/runmodel.py)
            hooks.print(first_step_note(trainer))  # the silence until the first progress line, explained
            reason, train_metrics = loop.train(trainer, run.val_blocks, hooks, history)
            if reason == "interrupted":
                hooks.print(f"interrupted at step {trainer.step}: resumable state saved in {args.out}; "
                            f"run the same command with --resume to continue")
                out.set_status("interrupted", step=trainer.step, signal=interrupt.name)
                return interrupt.exit_code
            with interrupt.deferred():  # the trained model is written whole, even if Ctrl-C comes twice
                save_run(out, hooks, describe(args, run, trainer.total_steps), train_metrics, history.log)
            return evaluate_and_finish(out, trainer, run.val_blocks, train_metrics, interrupt, hooks)
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM): stop at once
        out.record_failure("interrupted", f"{interrupt.name} twice")
        raise
    except NonFiniteLoss as e:  # say what is left to go back to
        out.record_failure("failed", str(e))
        raise NonFiniteLoss(f"{e}, {hooks.kept()}") from None
    except Exception as e:  # a full disk, another torchrun process killed, ...: status.json says why
        out.record_failure("failed", lost_a_process(e) or str(e))
        raise
    finally:
        hooks.close()
        out.release()


def resume(trainer, history, state, data_info, hooks):
    """Continue from a resumable state: the trainer, the history, and log.jsonl cut back to it."""
    hooks.print(f"loading the resumable state {state} ({os.path.getsize(state) / 1e9:.2g} GB: the weights and "
                f"AdamW's moments)")
    notes = (sharded.load if trainer.cfg.fsdp else checkpoint.load)(trainer, history, state, data_info)
    hooks.resumed(trainer, history)
    for note in notes:  # a resume that will not be bit-exact says so
        hooks.print(note)


def first_step_note(trainer) -> str:
    """What happens until the first progress line: the first step, slower than the rest."""
    session = trainer.total_steps - trainer.step
    estimate = f"; the time estimate after {ESTIMATE_AFTER + 1} steps" if session > 2 * ESTIMATE_AFTER else ""
    progress = "; the progress follows it" if trainer.cfg.progress else ""
    return f"step {trainer.step + 1} starting: the first step warms up and is the slowest{progress}{estimate}"


def checked_state(args, lr):
    """The state to resume from (or None), checked before any work: a checkpoint is never lost,
    and a resume that would be refused loads no model and no data."""
    state = resume_state(args)
    outdir.check(args.out, args.overwrite, state)
    if state:
        checkpoint.check_settings(state, settings.from_flags(args, lr=lr))
    return state


def resume_state(args):
    """--resume: OUT/resume.pt, the newest state (every save writes it, checkpoint-<step>/ folders
    or not); --resume-from-checkpoint PATH: that state, or a checkpoint folder's; else None."""
    if args.resume_from:
        return outdir.state_file(args.resume_from)
    return os.path.join(args.out, "resume.pt") if args.resume else None


def save_run(out, hooks, run_args, train_metrics, log_history):
    """The trained model first, then what describes it; status "saving" until it is all there."""
    out.set_status("saving")
    if out.is_main:
        print(metrics_block("train", train_metrics))
    hooks.save_model(out.path)  # every process (--fsdp gathers the weights first); rank 0 writes
    out.write_json("run_args.json", run_args)
    out.write_json("train_results.json", train_metrics)
    out.write_json("log_history.json", log_history)
    # The model is whole: from here on the directory is a finished run (whatever kills the
    # final evaluation), and only then does the resumable state go.
    out.set_status("done", note="the final evaluation did not finish (still running, or killed)")
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
    metrics = evaluate_shared(run.model.to(run.device), run.val_blocks, run.cfg.eval_batch_size, run.device,
                              run.cfg.eval_precision, run.dist)
    if run.dist.is_main:
        print(metrics_block("eval", metrics))
        out = outdir.RunDir(args.out).claim(add=True)  # results beside whatever is there
        try:
            out.merge_results("eval", metrics)
        finally:
            out.release()
    return 0


if __name__ == "__main__":
    streams.guard()  # a failing stdout or stderr (| head, a full disk) never costs the run
    sys.exit(run_cli(main))
