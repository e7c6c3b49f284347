"""Signals as requests: a Ctrl-C that stops a run cleanly instead of killing it.

A signal normally ends a Python program wherever it is: in the middle of an optimizer
step, or of writing a checkpoint. `Interrupt` turns it into a flag that the loop reads
between two steps (gpt2/trainer.py), so that the step in progress finishes and a
resumable state is saved before the run stops.
"""

import contextlib
import signal
import sys


class Interrupt:
    """Ctrl-C as a request to stop, for as long as the `with` block lasts.

    The first Ctrl-C sets `requested`; whoever is running decides what to keep (the
    loop finishes its step and saves a resumable state; the final evaluation is
    skipped, the model is saved already). A second Ctrl-C means "now": it raises
    KeyboardInterrupt, which the command line reports in one line (exit 130).
    `with` blocks may nest (train.py holds one for the whole run, Trainer.train one
    for the loop): each restores the handler it found.
    """

    def __init__(self, announce=True):
        self.requested = False
        self.announce = announce  # under torchrun only rank 0 prints
        self._previous = []
        self._deferring = self._pending = False

    def __enter__(self):
        self._previous.append(signal.signal(signal.SIGINT, self._on_sigint))
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous.pop())
        return False

    @contextlib.contextmanager
    def deferred(self):
        """A block a second Ctrl-C does not cut (the final model being written): it stops right after."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending:
            raise KeyboardInterrupt

    def _on_sigint(self, signum, frame):
        if self.requested:
            if self._deferring:
                self._pending = True
                return
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nCtrl-C: stopping after this step and keeping what was done (press again to abort at once)",
                  file=sys.stderr)
