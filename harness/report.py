"""Reporting a run the way run_clm.py (the Hugging Face Trainer) does.

Users compare runs by eye against their notebooks, so the blocks look exactly like
the Trainer's `log_metrics`: a `***** train metrics *****` header, keys sorted and
aligned, floats rounded to 4 decimals, runtimes as h:mm:ss.xx. The log lines during
training are the Trainer's too: {'loss': 2.5111, 'grad_norm': 1.23, 'learning_rate':
8.77e-05, 'epoch': 0.37}, where grad_norm is the norm of the step's whole gradient
before clipping (trainer.py), the number that shows clipping at work.

`Logger` sends each log entry where the ecosystem looks for it, as it happens:
the terminal, OUT/log.jsonl (one JSON object per line, so a run killed in the middle
keeps its curve up to its last log), and, with --report-to tensorboard, event files
under OUT/runs/ that `tensorboard --logdir OUT/runs` plots, under the Trainer's
names (train/loss, train/grad_norm, train/learning_rate, eval/loss, ...).
"""

import datetime
import json
import os
import socket
import time

from tqdm import tqdm

from gpt2.errors import UserError
from gpt2.files import atomic_path


def format_runtime(seconds: float) -> str:
    """3:21.77 as the Trainer writes it: 201.77 s -> '0:03:21.77'."""
    # Round to whole hundredths first, so that 1.999 s becomes 2.00, not 1.00.
    whole, hundredths = divmod(round(seconds * 100), 100)
    return f"{datetime.timedelta(seconds=whole)}.{hundredths:02d}"


def format_value(key: str, value):
    if key.endswith(("_runtime", "_runtime_total")):
        return format_runtime(value)
    if key.endswith("_mem_mb") or key.endswith("_memory_mb"):
        return round(value)
    if isinstance(value, float):
        return round(value, 4)
    return value


def metrics_block(split: str, metrics: dict) -> str:
    shown = {k: format_value(k, v) for k, v in metrics.items()}
    kw = max(len(k) for k in shown)
    vw = max(len(str(v)) for v in shown.values())
    lines = [f"***** {split} metrics *****"]
    lines += [f"  {k: <{kw}} = {str(shown[k]):>{vw}}" for k in sorted(shown)]
    return "\n".join(lines)


def format_lr(lr: float) -> str:
    """1e-3, 5e-5, 2.5e-4, 1e0: a learning rate as one writes it on the command line.

    Always in scientific notation, with a mantissa free of trailing zeros, so that a
    rate has one spelling (0.001 and 1e-3 are the same sweep directory). Twelve
    significant digits hide the binary rounding of float (3e-4 is stored as 0.000299999...).
    """
    mantissa, exponent = f"{lr:.11e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def log_line(entry: dict) -> str:
    """{'loss': 2.5111, 'learning_rate': 8.77e-05, 'epoch': 0.37}, as the Trainer logs."""
    return str({k: (round(v, 4) if k in ("loss", "eval_loss", "grad_norm") else v) for k, v in entry.items()})


# --- progress where no terminal shows a bar ----------------------------------------------

def format_duration(seconds: float) -> str:
    """0:02:11 for 131.4 s: whole seconds, for progress and estimates."""
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


def progress_line(step, total, loss, tokens_per_second, elapsed, remaining, timed_from=None) -> str:
    """step 40/195 (21%)  step loss 3.2141  1,234 tok/s  elapsed 0:02:11 (steps 2-40)  remaining 0:08:30

    The loss is this step's own (a log line's is the mean since the last log); elapsed
    covers the steps timed, after `timed_from` (start-up and the warm-up step are not in it).
    """
    loss_text = f"  step loss {float(loss):.4f}" if loss is not None else ""  # float(): a tensor is read here
    covers = "" if timed_from is None else f" (step {step})" if step == timed_from + 1 else \
        f" (steps {timed_from + 1}-{step})"
    return (f"step {step}/{total} ({100 * step / max(1, total):.0f}%){loss_text}  {tokens_per_second:,.0f} tok/s  "
            f"elapsed {format_duration(elapsed)}{covers}  remaining {format_duration(remaining)}")


class ProgressLines:
    """A run's progress as plain lines at a steady pace, for output that is not a terminal.

    tqdm's bar redraws one line in place; in a file, a pipe or a job's log that is
    either nothing (the bar is off) or thousands of carriage returns. These lines are
    what a log reader wants instead: one after the first timed step (the run is alive,
    and how fast), then one every `every` seconds, and one at the last step. The
    remaining time is this session's pace so far times the steps left; the clock starts
    at `start_step` (the caller passes the step after which it starts timing).
    """

    def __init__(self, total_steps, tokens_per_step, start_step=0, every=30.0, print_fn=print,
                 clock=time.monotonic):
        self.total, self.tokens_per_step, self.every = total_steps, tokens_per_step, every
        self.print, self.clock = print_fn, clock
        self.start_step, self.start = start_step, clock()
        self.last_shown = None  # when the last line was printed

    def update(self, step, loss=None):
        """After optimizer step `step`: print a line if one is due; the line, or None."""
        now = self.clock()
        due = self.last_shown is None or now - self.last_shown >= self.every or step >= self.total
        if not due or step <= self.start_step:
            return None
        elapsed, done = now - self.start, step - self.start_step
        speed = done * self.tokens_per_step / elapsed if elapsed > 0 else 0.0
        remaining = elapsed / done * (self.total - step)
        line = progress_line(step, self.total, loss, speed, elapsed, remaining, timed_from=self.start_step)
        self.print(line)
        self.last_shown = now
        return line


def time_estimate(steps_done, elapsed, total_steps) -> str:
    """The header's estimate after the first steps: 'about 0:54:10 for 195 steps (17 s a step, from 3)'."""
    per_step = elapsed / max(1, steps_done)
    return (f"estimated training time: about {format_duration(per_step * total_steps)} for {total_steps} steps "
            f"({per_step:.3g} s a step, measured on the first {steps_done})")


def summary_writer_class():
    """torch.utils.tensorboard's SummaryWriter; a one-line error if the optional tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # imported here: it needs the tensorboard package
    except ImportError:
        raise UserError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


class Logger:
    """Log entries to the terminal, and when given a run directory, to log.jsonl and TensorBoard."""

    def __init__(self, print_fn=tqdm.write, out_dir=None, tensorboard=False):  # tqdm.write: above the bar
        self.print = print_fn
        self.jsonl = os.path.join(out_dir, "log.jsonl") if out_dir else None
        self.tensorboard = None  # the writer, opened at the first entry: until then OUT stays untouched
        self.tensorboard_dir = None
        if tensorboard and out_dir:
            # The Trainer's layout: one subdirectory per session, named by time and host.
            session = f"{time.strftime('%b%d_%H-%M-%S')}_{socket.gethostname()}"
            self.tensorboard_dir = os.path.join(out_dir, "runs", session)

    def write(self, entry: dict):
        """One entry, with its "step": printed, appended to log.jsonl, plotted."""
        shown = {k: v for k, v in entry.items() if k != "step"}
        self.print(log_line(shown))
        if self.jsonl:
            # O_NOFOLLOW: a link planted as log.jsonl is refused, never appended through.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(self.jsonl, "a", encoding="utf-8", opener=lambda p, _: os.open(p, flags, 0o666)) as f:
                f.write(json.dumps(entry) + "\n")  # flushed on close: a kill after this keeps the line
        if self.tensorboard_dir and self.tensorboard is None:
            self.tensorboard = summary_writer_class()(log_dir=self.tensorboard_dir)
        if self.tensorboard:
            for key, value in shown.items():
                name = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                self.tensorboard.add_scalar(name, value, entry["step"])
            self.tensorboard.flush()

    def rewrite(self, history):
        """log.jsonl holding exactly `history` (a resumed run: drop the lines logged after its state)."""
        if self.jsonl:
            with atomic_path(self.jsonl) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(entry) + "\n" for entry in history)

    def close(self):
        if self.tensorboard:
            self.tensorboard.close()
