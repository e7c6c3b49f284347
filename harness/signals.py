"""Signals as requests: a Ctrl-C (or a SIGTERM) that stops a run cleanly instead of killing it.

A signal normally ends a Python program wherever it is: in the middle of an optimizer
step, or of writing a checkpoint. `Interrupt` turns it into a flag that the loop reads
between two steps (gpt2/loop.py), so that the step in progress finishes (on a CPU, a
step still in its forward pass is dropped instead) and a resumable state is saved
before the run stops.

Ctrl-C (SIGINT) is not the only way a run is told to stop. The others end a process at
once unless it handles them, and then nothing is saved:

    SIGTERM   `timeout`, `kill`, `docker stop`, Kubernetes and SLURM at preemption or
              at the end of the time limit (they send SIGKILL a grace period later:
              30 s by default in Kubernetes and docker, SLURM's KillWait)
    SIGHUP    the terminal went away: a closed SSH session, a closed window
    SIGUSR1   SLURM's warning before the time limit (`#SBATCH --signal=USR1@120`)

All four mean the same here: finish the step, save a resumable state, say so in one
line, and exit with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM, the
shell's convention). Saving resume.pt must fit in the grace period: for GPT-2 124M it
is the model and AdamW's two moments, about 1.5 GB (see the README's figures).
"""

import contextlib
import os
import signal
import stat
import sys

# The signals that ask a run to stop, and how the announcement names them.
SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM (terminate: timeout, kill, preemption)",
           signal.SIGHUP: "SIGHUP (the terminal was closed)", signal.SIGUSR1: "SIGUSR1 (the job's time is nearly up)"}


class Interrupt:
    """A stop signal as a request to stop, for as long as the `with` block lasts.

    The first signal sets `requested` (and `signal`, its number); whoever is running
    decides what to keep (the loop finishes its step and saves a resumable state; the
    final evaluation is skipped, the model is saved already). A second one means "now":
    it raises KeyboardInterrupt, which the command line reports in one line (exit 130).
    `with` blocks may nest (train.py holds one for the whole run, Trainer.train one
    for the loop): each restores the handlers it found.
    """

    def __init__(self, announce=True):
        self.requested = False
        self.signal = None     # the number of the first signal received
        self.announce = announce  # under torchrun only rank 0 prints
        self._previous = []
        self._deferring = self._pending = False

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process that a signal ended."""
        return 128 + (self.signal or signal.SIGINT)

    @property
    def name(self) -> str:
        """How a message names what stopped the run: "Ctrl-C", "SIGTERM", ..."""
        return SIGNALS.get(self.signal, "Ctrl-C").split(" (")[0]

    def __enter__(self):
        self._previous.append({s: signal.signal(s, self._on_signal) for s in SIGNALS})
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.pop().items():
            signal.signal(s, handler)
        return False

    @contextlib.contextmanager
    def deferred(self):
        """A block a second signal does not cut (the final model being written): it stops right after."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending:
            raise KeyboardInterrupt(f"{self.name} twice")

    def _on_signal(self, signum, frame):
        if self.requested:
            if self._deferring:
                self._pending = True
                return
            raise KeyboardInterrupt(f"{self.name} twice")
        self.requested, self.signal = True, signum
        if self.announce:
            # On a CPU a step still in its forward pass is dropped, not finished (gpt2/loop.py):
            # --resume redoes it. Either way nothing done before it is lost.
            _say(f"\n{SIGNALS[signum]}: stopping at the end of the step in progress (or dropping it, if its "
                 f"forward pass is still running: --resume redoes it) and keeping what was done "
                 f"({'press again' if signum == signal.SIGINT else 'a second signal'} stops at once)")
        if signum == signal.SIGHUP:
            _detach_terminal()


def _detach_terminal():
    """After SIGHUP the terminal is gone, and writing to it fails (EIO): the run would then
    fail while saving what it earned, just to print a line. Output that went to the
    terminal goes to /dev/null from here on, as under `nohup`; a log file stays as it is.
    (A terminal is a character device; os.isatty cannot tell once it is hung up: it asks
    the terminal, which answers EIO.)"""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if stat.S_ISCHR(os.fstat(fd).st_mode):
                os.dup2(devnull, fd)
    os.close(devnull)


def _say(line):
    """Print to stderr, if there still is one: after SIGHUP the terminal may be gone."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
