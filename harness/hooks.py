"""The loop's hooks for a real run: the terminal, the run directory, signals.

gpt2/loop.py decides, between two steps, when to log, evaluate, save and stop; it
acts through a `Hooks` object. `RunHooks` is the one train.py passes:

    log            the Trainer's log line on the terminal, log.jsonl, TensorBoard (report.py)
    save_state     OUT/resume.pt, atomically (the state --resume continues); a periodic
                   save (--save-every) also leaves OUT/checkpoint-<step>/, a model with
                   that state beside it, as run_clm does (checkpoints.py); the newest
                   --save-total-limit of them are kept
    save_best      OUT/best/, a model directory (with the LoRA adapter in best/adapter/)
    stop_requested a signal turned into a request (signals.py)
    after_step     the progress: a bar on a terminal, else a plain line every 30 s
                   (report.ProgressLines); and after the first steps, the time estimate

Under torchrun only rank 0 prints and writes; every process calls save_state,
because gathering the random-number states is a collective (checkpoint.py).
"""

import os
import shutil
import sys
import time

from tqdm import tqdm

from gpt2 import checkpoint
from gpt2.lora import adapter_dir, load_adapter
from gpt2.loop import Hooks
from gpt2.weights import load_into, read_safetensors

from . import checkpoints, outdir
from .report import ProgressLines, time_estimate

RESUME = "resume.pt"
ESTIMATE_AFTER = 3  # steps timed (after the first, which pays for warming up) before the estimate


class RunHooks(Hooks):
    def __init__(self, out_dir, run, logger, interrupt, base_model, run_args=None):
        self.out, self.dist, self.logger, self.interrupt = out_dir, run.dist, logger, interrupt
        self.run, self.base_model = run, base_model  # what save_model writes
        self.data = run.data_info     # the training text's fingerprint, kept in the state
        self.run_args = run_args or {}  # run_args.json, also written into each checkpoint folder
        self.show_progress = run.cfg.progress and run.dist.is_main
        self.bar = self.lines = None
        self.timing = None            # (step, time) after this session's first step, for the estimate

    def resumed(self, trainer, history):
        """A run continued from a state: log.jsonl holds exactly its history again."""
        self.logger.rewrite(history.log)  # the lines logged after this state are gone
        self.print(f"resuming at step {trainer.step} of {trainer.total_steps}")

    def print(self, text):
        if self.dist.is_main:
            tqdm.write(text)

    def log(self, entry):
        self.logger.write(entry)

    def stop_requested(self):
        return self.interrupt.requested

    def save_state(self, trainer, history):
        state = checkpoint.state_dict(trainer, history, self.data)  # every process: a collective
        if self.dist.is_main:
            os.makedirs(self.out, exist_ok=True)
            path = os.path.join(self.out, RESUME)
            checkpoint.write(state, path)
            if not self.interrupt.requested:  # a periodic save, not the one a signal asked for
                self.save_checkpoint_folder(trainer, history, path)
        self.dist.barrier()  # the others wait until the files are written

    def save_checkpoint_folder(self, trainer, history, state_path):
        """OUT/checkpoint-<step>/: the model, and the state just written beside it (a second name
        for the same file: no extra disk); then only the newest --save-total-limit folders stay."""
        trainer_state = {"global_step": trainer.step, "epoch": trainer.epoch, "max_steps": trainer.total_steps,
                         "log_history": history.log}
        checkpoints.write(self.out, trainer.step, self.save_model, lambda path: link_or_copy(state_path, path),
                          self.run_args, trainer_state)
        checkpoints.rotate(self.out, trainer.cfg.save_total_limit)

    def save_model(self, directory, weights=None):
        """A complete model directory: OUT at the end, best/, a checkpoint folder (outdir.py).
        Called by every process (ShardedRunHooks gathers the weights first); rank 0 writes.
        weights: the state to write, if not the model's own (gathered from the shards)."""
        if self.dist.is_main:
            outdir.save_model(self.run, directory, self.base_model, weights)

    def save_best(self, trainer):
        self.save_model(os.path.join(self.out, "best"))  # every process calls it; rank 0 writes

    def load_best(self, trainer):
        """The weights save_best wrote: under LoRA, the adapter alone (best/adapter/)."""
        directory = os.path.join(self.out, "best")
        if getattr(trainer.model, "lora_config", None) is not None:
            load_adapter(trainer.model, adapter_dir(directory))
        else:
            path = os.path.join(directory, "model.safetensors")
            load_into(trainer.model, read_safetensors(path), path)

    def kept(self) -> str:
        """What a run that must stop keeps: the last resumable state, or nothing."""
        path = os.path.join(self.out, RESUME)
        return f"the last good checkpoint, {path}, is kept" if os.path.exists(path) else "nothing was saved"

    # --- the progress: a bar, or lines; the time estimate --------------------------
    def after_step(self, trainer, loss=None):
        """The progress shows this step's loss (not the last logged one, which stays put between
        logs and makes a run look stuck); read from the device only when a line is shown."""
        if self.dist.is_main:
            self.estimate(trainer)
        if not self.show_progress:
            return
        if self.bar is None and self.lines is None:
            if sys.stderr.isatty():
                self.bar = tqdm(total=trainer.total_steps, initial=trainer.step - 1, unit="step", dynamic_ncols=True)
                self._start, self._t0, self._shown = trainer.step - 1, time.time(), 0.0
            else:  # a log file, a pipe, CI: a bar would show nothing (or carriage returns)
                # Timed from the end of this first step (which pays for warming up): lines from the next.
                self.lines = ProgressLines(trainer.total_steps, trainer.tokens_per_step, trainer.step,
                                           print_fn=lambda line: print(line, file=sys.stderr, flush=True))
        if self.lines is not None:
            self.lines.update(trainer.step, loss)
            return
        self.bar.update(1)
        if time.time() - self._shown > 1.0:  # the bar's numbers, once a second
            tokens = (trainer.step - self._start) * trainer.tokens_per_step
            step_loss = f"step loss {float(loss):.4f}, " if loss is not None else ""
            self.bar.set_postfix_str(f"{step_loss}{tokens / (time.time() - self._t0):,.0f} tok/s", refresh=False)
            self._shown = time.time()

    def estimate(self, trainer):
        """The header's last line, once: the whole run's time, from this session's first steps."""
        if self.timing is None:
            self.timing = (trainer.step, time.time())  # the first step (warming up) is not timed
        elif self.timing[0] is not None and trainer.step - self.timing[0] == ESTIMATE_AFTER:
            session = trainer.total_steps - self.timing[0] + 1  # the steps this session runs
            if session > 2 * ESTIMATE_AFTER:  # a run that short is nearly over: no estimate
                self.print(time_estimate(ESTIMATE_AFTER, time.time() - self.timing[1], session))
            self.timing = (None, None)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.logger.close()


def link_or_copy(source, target):
    """`target` as a second name of `source` (a hard link), or a copy where links are not allowed."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def bytes_needed(trainer) -> int:
    """Disk space a run needs in OUT: the final model, resume.pt twice (the new one is written
    beside the old before it replaces it), best/ with --save-best, and some slack. Periodic
    saves add the checkpoint folders: --save-total-limit of them and the next one being
    written, each a model and a state (an older folder keeps its state when resume.pt moves on)."""
    weights = sum(p.numel() * p.element_size() for p in trainer.model.state_dict().values())
    moments = sum(2 * p.numel() * 4 for p in trainer.model.parameters() if p.requires_grad)  # AdamW, fp32
    resume = weights + moments
    folders = (trainer.cfg.save_total_limit + 1) * (weights + resume) if trainer.cfg.save_strategy != "no" else 0
    return weights * (1 + trainer.cfg.save_best) + 2 * resume + folders + 16 * 2**20
