"""The loop's hooks for a real run: the terminal, the run directory, signals.

gpt2/loop.py decides, between two steps, when to log, evaluate, save and stop; it
acts through a `Hooks` object. `RunHooks` is the one train.py passes:

    log            the Trainer's log line on the terminal, log.jsonl, TensorBoard (report.py)
    save_state     OUT/resume.pt, atomically; with --save-total-limit N the N-1 states
                   before it are kept as resume-<step>.pt
    save_best      OUT/best/, a model directory (with the LoRA adapter in best/adapter/)
    stop_requested a signal turned into a request (signals.py)
    after_step     the progress bar

Under torchrun only rank 0 prints and writes; every process calls save_state,
because gathering the random-number states is a collective (checkpoint.py).
"""

import os
import re
import time

from tqdm import tqdm

from gpt2 import checkpoint
from gpt2.files import atomic_path
from gpt2.lora import adapter_dir, load_adapter
from gpt2.loop import Hooks
from gpt2.weights import load_into, read_safetensors

RESUME = "resume.pt"


class RunHooks(Hooks):
    def __init__(self, out_dir, dist, logger, interrupt, save_model, data: dict, progress: bool):
        self.out, self.dist, self.logger, self.interrupt = out_dir, dist, logger, interrupt
        self.save_model = save_model  # writes a complete model directory (train.py)
        self.data = data              # the training text's fingerprint, kept in the state
        self.saved_step = None        # the step of OUT/resume.pt, once this run has one
        self.show_bar = progress and dist.is_main
        self.bar = None

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
            if trainer.cfg.save_total_limit > 1 and self.saved_step is not None and os.path.exists(path):
                keep_previous(path, self.saved_step, trainer.cfg.save_total_limit)
            checkpoint.write(state, path)
        self.saved_step = trainer.step
        self.dist.barrier()  # the others wait until the file is written

    def save_best(self, trainer):
        self.save_model(os.path.join(self.out, "best"))

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

    # --- the progress bar ---------------------------------------------------------
    def after_step(self, trainer):
        if not self.show_bar:
            return
        if self.bar is None:
            # disable=None: no bar when the output is not a terminal (a log file, CI).
            self.bar = tqdm(total=trainer.total_steps, initial=trainer.step - 1, unit="step",
                            dynamic_ncols=True, disable=None)
            self._start, self._t0, self._shown = trainer.step - 1, time.time(), 0.0
        self.bar.update(1)
        if time.time() - self._shown > 1.0:  # the bar's numbers, once a second
            tokens = (trainer.step - self._start) * trainer.tokens_per_step
            self.bar.set_postfix_str(f"{tokens / (time.time() - self._t0):,.0f} tok/s", refresh=False)
            self._shown = time.time()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.logger.close()


def keep_previous(path, step, limit):
    """Before resume.pt (the state of `step`) is replaced: keep it as resume-<step>.pt, and
    of those only the newest limit - 1."""
    directory = os.path.dirname(path)
    try:
        os.link(path, os.path.join(directory, f"resume-{step}.pt"))  # a second name for the same file:
    except FileExistsError:                                          # replacing resume.pt leaves it whole
        pass
    except OSError:  # a filesystem without hard links: a copy
        with atomic_path(os.path.join(directory, f"resume-{step}.pt")) as tmp, open(path, "rb") as src:
            with open(tmp, "wb") as dst:
                dst.write(src.read())
    steps = sorted(int(m[1]) for name in os.listdir(directory) if (m := re.fullmatch(r"resume-(\d+)\.pt", name)))
    for old in steps[:max(0, len(steps) - (limit - 1))]:
        os.remove(os.path.join(directory, f"resume-{old}.pt"))


def bytes_needed(trainer) -> int:
    """Disk space a run needs in OUT: the final model, resume.pt twice (the new one is written
    beside the old before it replaces it), best/ with --save-best, and some slack."""
    weights = sum(p.numel() * p.element_size() for p in trainer.model.state_dict().values())
    moments = sum(2 * p.numel() * 4 for p in trainer.model.parameters() if p.requires_grad)  # AdamW, fp32
    resume = weights + moments
    return weights * (1 + trainer.cfg.save_best) + 2 * resume + 16 * 2**20
